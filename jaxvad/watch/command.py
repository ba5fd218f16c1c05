"""`python -m jaxvad.watch`: score live sources as their frames arrive, and raise events.

    python -m jaxvad.watch --config=FILE --workdir=DIR --source=URI [--source=URI ...] \\
        [--events=FILE] [--scores=FILE] [--explain] [--sink=SPEC ...]

Only the workdir is needed (`jaxvad.detector.load`): `--config` overrides the run's stored
config (as `jaxvad.evaluate`'s does) and may be left out. Sources: `jaxvad.watch.sources`;
scoring: `jaxvad.watch.stream`; events: `jaxvad.watch.events` (default file
`DIR/watch/events.jsonl`); sinks: `jaxvad.watch.sinks`.

`--scores=FILE` appends `camera,frame,score,score_rgb,score_flow` per scored frame (header
first when the file is new), floats as `frame_scores.csv` writes them, flushed every tick.
A status line every `config.watch.status_every_s` seconds gives per camera the frames scored
per second, the frames dropped and undecodable, and the open events. SIGINT and SIGTERM stop
the loop: open events are closed, every file flushed. Watching ends by itself when every source
has ended (files and folders; a network stream is reopened, never ended).

`--explain` explains each closed event's peak frame off the scoring path, with the images,
record fields and caption of `jaxvad.explain` (`--blip=DIR` for captions), into
`DIR/watch/explain/<camera>_<n>/` (`jaxvad.watch.explainer`).

A run in object mode (frames scored from their objects) streams too (`jaxvad.watch.objects`):
each camera's first `config.watch.prime_frames` frames prime the object detector's background
model before any is scored, and events (and `--explain`'s explanations) carry the peak frame's
objects. Not built yet: caching motion_mae's and mdsf's per-frame work (`jaxvad.watch.stream`
says what is recomputed).

A weakly supervised run (`aadc`) streams through `jaxvad.watch.weak`: each frame's CLIP
features once, each new snippet scored from the snippets up to it, its frames' `score_rgb` and
`score_flow` written as nan, events above `config.explain.alarm_score` naming their peak's
category with its text similarity; `--explain` is refused.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import flags

from jaxvad import cli, distributed
from jaxvad import config as config_lib
from jaxvad import detector as detector_lib
from jaxvad.data.video_io import DataError
from jaxvad.vlm import blip as blip_lib
from jaxvad.vlm.clip import ClipWeightsError
from jaxvad.watch import events as events_lib
from jaxvad.watch import explainer as explainer_lib
from jaxvad.watch import objects as objects_lib
from jaxvad.watch import sinks as sinks_lib
from jaxvad.watch import sources as sources_lib
from jaxvad.watch import stream as stream_lib
from jaxvad.watch import weak as weak_lib

log = logging.getLogger("jaxvad.watch")

SCORE_COLUMNS = ("camera", "frame", "score", "score_rgb", "score_flow")
USAGE = (
    "python -m jaxvad.watch [--config=FILE] --workdir=DIR --source=[NAME=]URI [--source=...] "
    "[--events=FILE] [--scores=FILE] [--explain [--blip=DIR]] "
    "[--sink=webhook:URL | --sink=mqtt://HOST:PORT/TOPIC ...]"
)


class UsageError(ValueError):
    """A flag value watch cannot use."""


def _number(x: float) -> str:
    return repr(float(x))


def watch(
    config: ml_collections.ConfigDict | None,
    workdir: str | Path,
    sources: list[str],
    *,
    events: str | None = None,
    scores: str | None = None,
    sinks: Sequence[str] = (),
    explain: bool = False,
    blip: str | None = None,
    stop: list[bool] | None = None,
) -> dict[str, sources_lib.Counters]:
    """Watches `sources` until they end or a signal (or `stop[0]` set True) stops it; returns
    each camera's counters. Everything is checked before a file is written."""
    if blip and not explain:
        raise UsageError("--blip captions explanations: give --explain too")
    captioner = blip_lib.Captioner.load(blip) if blip else None  # A bad folder fails first.
    specs = sources_lib.parse_sources(sources)
    names = [s.name for s in specs]
    found = None  # A frame or object run's detector (--explain).
    if weak_lib.is_weak_run(Path(workdir)):
        if explain:
            raise UsageError(
                "--explain explains the peaks of a frame or object run; a weakly supervised "
                "run's events name their category: explain its videos with jaxvad.explain"
            )
        run = weak_lib.load(config, Path(workdir), names)
    else:
        overrides = {} if config is None else config_lib.flatten(config)
        found = detector_lib.load(workdir, overrides)
        run = _frame_run(found, names)
    w = run.config.watch
    built = [sinks_lib.parse_sink(s) for s in sinks]
    readers: list[sources_lib.Reader] = []
    stop = stop if stop is not None else [False]
    previous = {
        s: signal.signal(s, lambda *_: stop.__setitem__(0, True))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    log_file = explainer = event_log = None
    try:
        events_path = Path(events) if events else Path(workdir) / "watch" / "events.jsonl"
        for spec in specs:
            readers.append(
                sources_lib.Reader(
                    spec,
                    queue=w.queue,
                    backoff_s=w.backoff_s,
                    max_backoff_s=w.max_backoff_s,
                    on_outage=lambda *a: event_log.outage(*a),
                )
            )
        event_log = events_lib.EventLog(
            events_path,
            names,
            threshold=run.threshold,
            open_after=w.open_after,
            close_after=w.close_after,
            update_every_s=w.update_every_s,
            sinks=built,
        )
        writer = None
        if scores:
            path = Path(scores)
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.is_file() or path.stat().st_size == 0
            log_file = path.open("a", newline="", encoding="utf-8")
            writer = csv.writer(log_file, lineterminator="\n")
            if new:
                writer.writerow(SCORE_COLUMNS)
        if explain:
            root = Path(workdir) / "watch" / "explain"
            explainer = explainer_lib.Explainer(
                explainer_lib.explain_peak(found, root, captioner=captioner), event_log.write
            )
        _loop(run, names, readers, event_log, writer, log_file, stop, explainer)
    finally:
        for reader in readers:
            reader.stop()
        if explainer is not None:
            explainer.close()  # The pending explanations first: they write to the events file.
        if event_log is not None:
            event_log.close()  # Open events (a failure's) are closed as "stopped".
        for sink in built:
            sink.close()
        if log_file is not None:
            log_file.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return {r.spec.name: r.counters for r in readers}


def _frame_run(found: detector_lib.Detector, names: list[str]) -> stream_lib.Run:
    """A frame-level or object run's scorer and cameras (`jaxvad.watch.stream`, `objects`)."""
    data, w = found.config.data, found.config.watch
    windows = [
        stream_lib.CameraWindow(
            size=data.size, history=found.config.history, channels=data.channels, flow=data.flow
        )
        for _ in names
    ]
    if found.settings.object_mode:
        scorer = objects_lib.ObjectScorer(found, names)
        cameras = [objects_lib.ObjectCamera(window, w.prime_frames) for window in windows]
    else:
        scorer, cameras = stream_lib.StreamScorer.of_detector(found, names), windows
    return stream_lib.Run(found.config, found.threshold, scorer, cameras, windows)


def _loop(run, names, readers, event_log, writer, log_file, stop, explainer) -> None:
    """Ticks until every source ended or `stop[0]`: take each camera's next frame, push it
    (flow, in a thread pool), score the ready ones in one call, write scores and events; with
    an `explainer`, keep each pending event's peak window and hand it over when it closes."""
    cameras, windows, scorer, w = run.cameras, run.windows, run.scorer, run.config.watch
    peaks: dict[str, explainer_lib.Peak] = {}
    scored = [0] * len(names)
    last_status, last_scored = time.monotonic(), list(scored)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
        while not stop[0]:
            items = [r.get() if c.wants else None for r, c in zip(readers, cameras, strict=True)]
            ended = [item is None and r.finished for item, r in zip(items, readers, strict=True)]
            todo = [i for i, c in enumerate(cameras) if items[i] is not None or c.busy]
            pushed = pool.map(
                lambda c, item, end: c.take(item, end),
                [cameras[i] for i in todo],
                [items[i] for i in todo],
                [ended[i] for i in todo],
            )
            arrived = [i for i, took in zip(todo, pushed, strict=True) if took]
            if not arrived:
                if all(ended) and not any(c.busy for c in cameras):
                    break
                time.sleep(0.002)
                continue
            now = time.time()
            for frame in scorer.score(cameras, arrived):
                camera = names[frame.slot]
                scored[frame.slot] += 1
                higher = camera not in peaks or frame.score > peaks[camera].score
                if explainer is not None and frame.score > event_log.threshold and higher:
                    slot = cameras[frame.slot]
                    peaks[camera] = explainer_lib.Peak(
                        frame.score,
                        frame.number,
                        *windows[frame.slot].window(),
                        objects=getattr(slot, "objects", None),
                        frame_size=getattr(slot, "frame_size", None),
                    )
                closed = event_log.update(
                    camera,
                    frame.number,
                    frame.score,
                    frame.score_rgb,
                    frame.score_flow,
                    now,
                    objects=frame.objects,
                    what=frame.modality,
                    details=frame.details,
                )
                if explainer is not None:
                    if closed is not None:
                        explainer.submit(closed, camera, peaks.pop(camera))  # Set above.
                    elif not event_log.pending(camera):
                        peaks.pop(camera, None)
                if writer is not None:
                    writer.writerow(
                        (
                            camera,
                            frame.number,
                            _number(frame.score),
                            _number(frame.score_rgb),
                            _number(frame.score_flow),
                        )
                    )
            if log_file is not None:
                log_file.flush()
            if time.monotonic() - last_status >= w.status_every_s:
                elapsed = time.monotonic() - last_status
                log.info(_status(readers, scored, last_scored, elapsed, event_log))
                last_status, last_scored = time.monotonic(), list(scored)
    for camera, event in event_log.close_events().items():
        if explainer is not None and camera in peaks:
            explainer.submit(event, camera, peaks.pop(camera))


def _status(readers, scored, last_scored, elapsed, event_log) -> str:
    """One status line: per camera fps, dropped, undecodable; the open events."""
    parts = []
    for reader, now, before in zip(readers, scored, last_scored, strict=True):
        c = reader.counters
        fps = (now - before) / max(elapsed, 1e-9)
        parts.append(
            f"{reader.spec.name}: {fps:.1f} fps, dropped {c.dropped}, undecodable {c.undecodable}"
        )
    return f"status: {'; '.join(parts)}; open events {event_log.open_events()}"


USER_ERRORS = (
    *detector_lib.LOAD_ERRORS,
    sources_lib.SourceError,
    sinks_lib.SinkError,
    stream_lib.StreamError,
    events_lib.EventsFileError,
    blip_lib.BlipWeightsError,
    ClipWeightsError,
    DataError,
    UsageError,
)


def use_the_runs_cpu_layout(workdir: Path) -> int | None:
    """Without --config, splits JAX's CPU backend as the run's own config asks
    (`mesh.cpu_devices`, read from `workdir/config.json`), as `cli.run` does from --config, so
    that a watch on the workdir alone gets the run's layout; it must come before JAX starts,
    and the checkpoint's copy of the config is read through Orbax, which starts it. Returns
    `distributed.use_cpu_cores`'s count; None where there is no readable config.json (the
    layout stays as it is; the detector's load reports a broken run)."""
    try:
        stored = config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    except (OSError, ValueError, KeyError, config_lib.ConfigError):
        return None
    return distributed.use_cpu_cores(stored.mesh.cpu_devices, config_lib.batch_sizes(stored))


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "the run's directory", required=True)
    source = flags.DEFINE_multi_string("source", [], "[NAME=]URI: a file, folder, stream or camera")
    events = flags.DEFINE_string("events", None, "events JSONL (default DIR/watch/events.jsonl)")
    scores = flags.DEFINE_string("scores", None, "append per-frame scores to this CSV")
    explain = flags.DEFINE_boolean("explain", False, "explain each event's peak frame")
    blip = flags.DEFINE_string("blip", None, "with --explain: a BLIP folder for captions")
    sink = flags.DEFINE_multi_string("sink", [], "webhook:URL or mqtt://HOST:PORT/TOPIC")

    def command() -> None:
        if config.value is None:
            use_the_runs_cpu_layout(Path(workdir.value))
        counters = watch(
            config.value,
            workdir.value,
            source.value,
            events=events.value,
            scores=scores.value,
            sinks=sink.value,
            explain=explain.value,
            blip=blip.value,
        )
        for name, c in counters.items():
            print(
                f"{name}: read {c.read} frames, dropped {c.dropped}, undecodable {c.undecodable}",
                file=sys.stderr,
            )

    with contextlib.suppress(KeyboardInterrupt):
        cli.run(command, config=config, usage=USAGE, user_errors=USER_ERRORS, config_optional=True)
