"""`jaxvad.watch`: streamed scores equal evaluated ones, events with hysteresis written once
across restarts, sinks, a source served over HTTP with a password that never shows, and bad
input as one clear line (on `labeled_run`, the tiny model on Ped2-like clips)."""

from __future__ import annotations

import collections
import csv
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import typing
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, copy_run, load_config, run_module, wait_for

from jaxvad import evaluate
from jaxvad.data.video_io import numbered_images
from jaxvad.watch import events as events_lib
from jaxvad.watch import sinks as sinks_lib
from jaxvad.watch import sources as sources_lib
from jaxvad.watch.command import watch


def source_video(labeled_data) -> Path:
    """The first test clip of `labeled_data`'s source, a folder of numbered frames."""
    return labeled_data["labeled"].parent / "source" / "Test" / "Test001"


def read_scores(path: Path) -> dict[int, tuple[float, float, float]]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {
        int(r["frame"]): (float(r["score"]), float(r["score_rgb"]), float(r["score_flow"]))
        for r in rows
    }


def evaluated_scores(workdir: Path, video: str) -> dict[int, tuple[float, float, float]]:
    """`frame_scores.csv`'s scored rows of `video`: frame → (score, score_rgb, score_flow)."""
    with (workdir / "eval" / "frame_scores.csv").open() as f:
        return {
            int(r["frame"]): (float(r["score"]), float(r["score_rgb"]), float(r["score_flow"]))
            for r in csv.DictReader(f)
            if r["video"] == video and r["scored"] == "1"
        }


def test_watched_scores_of_a_video_equal_its_evaluated_scores(labeled_run, labeled_data, tmp_path):
    """Frame by frame, `--scores` of a test clip equals `frame_scores.csv`'s rows for it
    (within 1e-5), from the workdir alone; frames t ≤ T have no score."""
    workdir = copy_run(labeled_run, tmp_path / "run")
    evaluate.evaluate(labeled_run.config, workdir)
    evaluated = evaluated_scores(workdir, "Test001")
    scores = tmp_path / "scores.csv"
    counters = watch(None, workdir, [str(source_video(labeled_data))], scores=str(scores))
    streamed = read_scores(scores)
    assert sorted(streamed) == sorted(evaluated)
    assert min(streamed) == labeled_run.config.history + 1
    for frame, values in evaluated.items():
        np.testing.assert_allclose(streamed[frame], values, atol=1e-5, err_msg=f"frame {frame}")
    (counter,) = counters.values()
    assert counter.dropped == 0 and counter.read == len(numbered_images(source_video(labeled_data)))
    assert (workdir / "watch" / "events.jsonl").is_file()


def test_watch_on_the_workdir_alone_splits_the_cpu_as_the_run_says(
    labeled_run, labeled_data, tmp_path
):
    """Without --config, `python -m jaxvad.watch` lays JAX's CPU out as the run's own
    config.json asks (`mesh.cpu_devices`), as a command given --config does; a workdir
    without a readable config.json leaves the layout alone."""
    from jaxvad import config as config_lib
    from jaxvad import distributed
    from jaxvad.watch import command

    workdir = copy_run(labeled_run, tmp_path / "run")
    stored = config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    cores = len(os.sched_getaffinity(0))
    expected = distributed.cpu_device_count(0, cores, config_lib.batch_sizes(stored))
    assert stored.mesh.cpu_devices == 0
    # A bad sink is refused once the run is loaded (its mesh logged), before any frame.
    result = run_module(
        "jaxvad.watch",
        f"--workdir={workdir}",
        f"--source={source_video(labeled_data)}",
        "--sink=kafka://x",
        env={"JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 1 and "--sink=" in result.stderr, result.stderr[-2000:]
    assert f"devices: {expected} local" in result.stderr, result.stderr[-2000:]
    assert command.use_the_runs_cpu_layout(tmp_path / "no_run") is None


def feed(log: events_lib.EventLog, camera: str, scores: list[float], start: int = 1) -> None:
    for k, s in enumerate(scores):
        log.update(camera, start + k, s, s, 0.0, 1000.0 + k)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_open_after_k_frames_above_and_close_after_m_below(tmp_path):
    path = tmp_path / "events.jsonl"
    log = events_lib.EventLog(path, ["a", "b"], threshold=1.0, open_after=3, close_after=2)
    # Frames 1-2 above (too few), 4-9 above with a dip at 7 (one frame below: stays open),
    # 10-11 below: closes at 11; its last frame is 9.
    feed(log, "a", [2, 2, 0, 2, 3, 2, 0, 5, 2, 0, 0, 0])
    feed(log, "b", [2, 2, 2])  # Open when the run stops.
    log.close()
    got = records(path)
    kinds = [(r["camera"], r["type"]) for r in got]
    assert kinds[0] == ("a", "open") and ("a", "close") in kinds and ("b", "open") in kinds
    opened = next(r for r in got if r["type"] == "open" and r["camera"] == "a")
    assert (opened["first_frame"], opened["last_frame"], opened["peak_frame"]) == (4, 6, 5)
    closed = next(r for r in got if r["type"] == "close" and r["camera"] == "a")
    assert (closed["first_frame"], closed["peak_frame"], closed["last_frame"]) == (4, 8, 9)
    assert closed["peak_score"] == 5 and closed["reason"] == "scores fell"
    assert closed["modality"] == "appearance" and closed["event"] == "a#1"
    updates = [r for r in got if r["type"] == "update"]
    assert [u["peak_frame"] for u in updates] == [8]  # The peak rose at frame 8.
    b_closed = [r for r in got if r["camera"] == "b" and r["type"] == "close"]
    assert len(b_closed) == 1 and b_closed[0]["reason"] == "stopped"


def test_a_restart_appends_continues_ids_and_closes_a_killed_runs_event_once(tmp_path):
    path = tmp_path / "events.jsonl"
    log = events_lib.EventLog(path, ["a"], threshold=1.0, open_after=1, close_after=1)
    feed(log, "a", [2, 0, 2])  # a#1 opened and closed, a#2 left open: the run is killed.
    log._file.close()
    with path.open("a") as f:
        f.write('{"type": "upd')  # Torn by the kill.
    again = events_lib.EventLog(path, ["a"], threshold=1.0, open_after=1, close_after=1)
    feed(again, "a", [2, 0], start=10)
    again.close()
    got = records(path)
    closes = [r["event"] for r in got if r["type"] == "close"]
    assert sorted(closes) == ["a#1", "a#2", "a#3"]
    assert next(r for r in got if r["event"] == "a#2" and r["type"] == "close")["reason"] == (
        "restart"
    )
    third = events_lib.EventLog(path, ["a"], threshold=1.0, open_after=1, close_after=1)
    third.close()  # Nothing left open: nothing written.
    assert len(records(path)) == len(got)


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: typing.ClassVar[list] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).received.append(
            (json.loads(self.rfile.read(length)), self.headers.get("Authorization"))
        )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_sink_posts_every_record_with_the_token_from_the_environment(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("JAXVAD_WEBHOOK_TOKEN", "t0ken")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.received = []
    sink = sinks_lib.parse_sink(f"webhook:http://127.0.0.1:{server.server_port}/hook", rate=100)
    path = tmp_path / "events.jsonl"
    log = events_lib.EventLog(path, ["a"], threshold=1.0, open_after=1, close_after=1, sinks=[sink])
    feed(log, "a", [2, 0, 3, 0])
    log.close()
    sink.close()
    server.shutdown()
    assert [r for r, _ in _Recorder.received] == records(path)
    assert {auth for _, auth in _Recorder.received} == {"Bearer t0ken"}


def test_sources_are_named_without_their_passwords():
    spec = sources_lib.parse_source("rtsp://admin:s3cret@10.0.0.5:554/live")
    assert spec.name == "rtsp://admin:***@10.0.0.5:554/live" and spec.kind == "stream"
    named = sources_lib.parse_source("gate=rtsp://admin:s3cret@10.0.0.5/live")
    assert named.name == "gate" and named.uri == "rtsp://admin:s3cret@10.0.0.5/live"
    assert sources_lib.parse_source("0").kind == "camera"
    with pytest.raises(sources_lib.SourceError, match="two sources named 'gate'"):
        sources_lib.parse_sources(["gate=rtsp://a/x", "gate=rtsp://b/y"])
    for bad in ("webhook:ftp://x/y", "mqtt://broker", "kafka://x", "webhook:http://u:p@h/x"):
        with pytest.raises(sinks_lib.SinkError):
            sinks_lib.parse_sink(bad)


def write_mp4(folder: Path, path: Path) -> None:
    images = [cv2.imread(str(p)) for p in numbered_images(folder)]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for image in images:
        writer.write(image)
    writer.release()


@pytest.mark.slow
def test_an_http_source_with_a_password_never_shows_it_and_sigterm_closes_cleanly(
    labeled_run, labeled_data, tmp_path
):
    """A clip served over HTTP with credentials in its URI: watch scores it, reconnects when
    it ends, stops on SIGTERM with its files flushed, and the password is in no file it wrote
    and none of its output."""
    workdir = copy_run(labeled_run, tmp_path / "run")
    served = tmp_path / "served"
    served.mkdir()
    write_mp4(source_video(labeled_data), served / "clip.mp4")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "pa55w0rd-xyz"
    uri = f"http://viewer:{secret}@127.0.0.1:{server.server_port}/clip.mp4"
    scores, events = tmp_path / "out" / "scores.csv", tmp_path / "out" / "events.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jaxvad.watch",
            f"--workdir={workdir}",
            f"--source={uri}",
            f"--scores={scores}",
            f"--events={events}",
            "--config=configs/synthetic.py:tiny",
            "--config.data.dataset=ped2",
            f"--config.data.root={labeled_run.config.data.root}",
            "--config.watch.status_every_s=0.5",
            "--config.watch.backoff_s=0.2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: scores.is_file() and len(scores.read_text().splitlines()) > 5, process, 120
        )
        wait_for(lambda: "outage" in (events.read_text() if events.is_file() else ""), process, 60)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        server.shutdown()
    assert process.returncode == 0, err
    written = [
        p for p in [*tmp_path.joinpath("out").rglob("*"), *workdir.rglob("*")] if p.is_file()
    ]
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in out and secret not in err
    assert "viewer:***@127.0.0.1" in err  # The status lines name it masked.
    assert read_scores(scores)
    outage = [r for r in records(events) if r["type"] == "outage"]
    assert outage and outage[0]["camera"].startswith("http://viewer:***@")


def test_bad_input_is_one_clear_line_and_writes_nothing(labeled_run, tmp_path):
    workdir = copy_run(labeled_run, tmp_path / "run")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    clip = tmp_path / "clip"
    clip.mkdir()
    cv2.imwrite(str(clip / "001.png"), np.zeros((8, 8), np.uint8))
    cases = [
        ([f"--workdir={workdir}", f"--source={not_video}"], "OpenCV cannot open"),
        ([f"--workdir={tmp_path / 'empty'}", f"--source={clip}"], "no checkpoints"),
        ([f"--workdir={workdir}", f"--source={clip}", "--sink=kafka://x"], "--sink="),
        ([f"--workdir={workdir}", f"--source=a={clip}", f"--source=a={clip}"], "two sources"),
        ([f"--workdir={workdir}", f"--source={tmp_path / 'missing'}"], "no such video"),
    ]
    for args, message in cases:
        result = run_module("jaxvad.watch", *args, f"--events={tmp_path / 'ev.jsonl'}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, result.stderr
        assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
        assert not (tmp_path / "ev.jsonl").exists()
        assert not (workdir / "watch").exists()


@pytest.mark.parametrize("name", ["predictor", "motion_mae", "mdsf"])
def test_the_streaming_step_gives_the_full_windows_errors(name):
    """Frame by frame through `stream_step` (each frame's `cached_frame` computed once) the
    errors of every frame t > T equal `error_step`'s on its full window (random weights)."""
    from flax import nnx

    from jaxvad import inference, model

    config = load_config("synthetic", f"{name},tiny")
    T, S, C = config.history, model.image_size(config), config.data.channels
    net = model.make_model(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(net, nnx.Param)
    rng = np.random.default_rng(0)
    n, B = T + 3, 2
    frames = rng.integers(0, 256, (B, n, S, S, C), dtype=np.uint8)
    flows = rng.normal(0, 0.1, (B, n, S, S, 2)).astype(np.float16)
    step = jax.jit(functools.partial(inference.stream_step, graphdef=graphdef))
    shape = jax.eval_shape(net.cached_frame, jnp.zeros((B, S, S, C)))
    cache = jnp.zeros((B, T, *shape.shape[1:]), shape.dtype)
    for t in range(n):
        past = flows[:, max(t - T, 0) : t]
        past = np.concatenate([np.zeros((B, T - past.shape[1], S, S, 2), np.float16), past], 1)
        batch = {
            "flows": past,
            "target_frame": frames[:, t],
            "target_flow": flows[:, t],
            "push": np.array([True, t % 2 == 0 or t < T]),  # Camera 1 misses some frames.
        }
        out, cache = step(params, cache, batch)
        if t < T:
            continue
        full = {
            "frames": frames[:, t - T : t],
            "flows": flows[:, t - T : t],
            "target_frame": frames[:, t],
            "target_flow": flows[:, t],
            **{k: np.zeros(B, np.int32) for k in ("video_index", "frame_index", "label")},
            "scored": np.ones(B, bool),
            "valid": np.ones(B, bool),
        }
        expected = inference.error_step(params, full, graphdef=graphdef, maps=False)
        np.testing.assert_allclose(out["rgb"][0], expected["rgb"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["flow"][0], expected["flow"][0], rtol=1e-5, atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_mqtt_subscriber_receives_exactly_the_event_records(tmp_path, monkeypatch):
    """Debian's mosquitto on loopback; the sink's credentials come from the environment."""
    import paho.mqtt.client as mqtt

    port = free_port()
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received, ready = [], threading.Event()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscriber.on_connect = lambda c, *a: (c.subscribe("jaxvad/events", qos=1), ready.set())
    subscriber.on_message = lambda c, u, message: received.append(json.loads(message.payload))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                subscriber.connect("127.0.0.1", port)
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.1)
        subscriber.loop_start()
        assert ready.wait(10)
        time.sleep(0.3)  # The subscription is acknowledged.
        monkeypatch.setenv("JAXVAD_MQTT_USERNAME", "watcher")  # mosquitto allows anyone.
        sink = sinks_lib.parse_sink(f"mqtt://127.0.0.1:{port}/jaxvad/events", rate=100)
        path = tmp_path / "events.jsonl"
        log = events_lib.EventLog(
            path, ["a"], threshold=1.0, open_after=1, close_after=1, sinks=[sink]
        )
        feed(log, "a", [2, 0, 3, 4, 0, 2])
        log.close()
        sink.close()
        deadline = time.monotonic() + 10
        while len(received) < len(records(path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == records(path)
    finally:
        subscriber.loop_stop()
        broker.terminate()
        broker.wait(10)


@pytest.mark.slow
def test_a_live_stream_killed_and_restarted_is_reopened_and_each_event_is_written_once(
    labeled_run, labeled_data, tmp_path
):
    """Debian's ffmpeg serves a clip over loopback TCP (looped, at its 10 fps); it is killed
    mid-stream and started again: watch reconnects, writes the outage, goes on scoring, and
    every event has one open and one close record."""
    workdir = copy_run(labeled_run, tmp_path / "run")
    clip = tmp_path / "clip.mp4"
    write_mp4(source_video(labeled_data), clip)
    port = free_port()
    serve = [
        "ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
        "-c:v", "mpeg4", "-q:v", "3", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1",
    ]  # fmt: skip
    server = subprocess.Popen(serve)
    scores, events = tmp_path / "scores.csv", tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jaxvad.watch", f"--workdir={workdir}",
            f"--source=live=tcp://127.0.0.1:{port}", f"--scores={scores}", f"--events={events}",
            "--config=configs/synthetic.py:tiny", "--config.data.dataset=ped2",
            f"--config.data.root={labeled_run.config.data.root}",
            "--config.score.threshold_quantile=0.5", "--config.watch.open_after=1",
            "--config.watch.close_after=1", "--config.watch.backoff_s=0.2",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def rows() -> int:
        return len(scores.read_text().splitlines()) if scores.is_file() else 0

    try:
        wait_for(lambda: rows() > 15, process, 120)
        server.kill()
        server.wait()
        before = rows()
        time.sleep(1.0)
        server = subprocess.Popen(serve)
        wait_for(lambda: "outage" in (events.read_text() if events.is_file() else ""), process, 60)
        wait_for(lambda: rows() > before + 15, process, 60)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        for p in (process, server):
            if p.poll() is None:
                p.kill()
    assert process.returncode == 0, err
    got = records(events)
    assert next(r for r in got if r["type"] == "outage")["camera"] == "live"
    opens = collections.Counter(r["event"] for r in got if r["type"] == "open")
    closes = collections.Counter(r["event"] for r in got if r["type"] == "close")
    assert opens and set(opens.values()) == {1} and closes == opens


@pytest.mark.slow
def test_memory_stays_flat_over_a_10000_frame_stream(labeled_run, tmp_path):
    """Peak RSS at frame 10,000 of a video is within 5 % of its peak at frame 1,000."""
    workdir = copy_run(labeled_run, tmp_path / "run")
    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48), False)
    base = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    for k in range(10_000):
        writer.write(np.roll(base, k % 64, axis=1))
    writer.release()
    scores = tmp_path / "scores.csv"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jaxvad.watch", f"--workdir={workdir}", f"--source={video}",
            f"--scores={scores}", "--config=configs/synthetic.py:tiny",
            "--config.data.dataset=ped2", f"--config.data.root={labeled_run.config.data.root}",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def peak_kib() -> int:
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )

    def rows() -> int:
        return len(scores.read_text().splitlines()) - 1 if scores.is_file() else 0

    try:
        wait_for(lambda: rows() >= 1_000, process, 300)
        at_1000 = peak_kib()
        wait_for(lambda: rows() >= 9_990, process, 600)
        at_end = peak_kib()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert at_end <= 1.05 * at_1000, (at_1000, at_end)


def test_explain_explains_each_closed_events_peak_off_the_scoring_path(
    labeled_run, labeled_data, blip_saved, tmp_path
):
    """`--explain --blip`: every closed event gets one `explained` record whose folder is a
    `jaxvad.explain` output of its peak's window: its record scores the peak frame as the
    stream did, with a caption."""
    from jaxvad.explain.command import RECORD_FIELDS

    workdir = copy_run(labeled_run, tmp_path / "run")
    config = labeled_run.config.copy_and_resolve_references()
    with config.unlocked():
        config.score.threshold_quantile = 0.3  # Events on the tiny model's clip.
        config.watch.open_after = 1
        config.watch.close_after = 1
    events = tmp_path / "events.jsonl"
    watch(
        config,
        workdir,
        [str(source_video(labeled_data))],
        events=str(events),
        explain=True,
        blip=str(blip_saved["small"].folder),
    )
    got = records(events)
    closes = {r["event"]: r for r in got if r["type"] == "close"}
    explained = {r["event"]: r for r in got if r["type"] == "explained"}
    assert closes and set(explained) == set(closes)
    assert len([r for r in got if r["type"] == "explained"]) == len(explained)
    for event, record in explained.items():
        assert record["peak_frame"] == closes[event]["peak_frame"]
        folder = Path(record["folder"])
        assert folder.parent == workdir / "watch" / "explain"
        (explanation,) = records(folder / "records.jsonl")
        assert set(RECORD_FIELDS) <= set(explanation)
        assert explanation["score"] == pytest.approx(closes[event]["peak_score"], abs=1e-5)
        assert isinstance(explanation["caption"], str) and explanation["caption"]
        assert record["caption"] == explanation["caption"]
        assert (folder / "report.html").is_file()


@pytest.mark.parametrize("run", ["object_run", "object_samples_run", "held_out_run"])
def test_watched_object_mode_scores_equal_evaluated_ones_and_events_name_boxes(
    run, object_run, request, tmp_path, monkeypatch
):
    """Object mode streams: a test clip's `--scores` equal `frame_scores.csv`'s rows for it
    (within 1e-5) for a frame model scored from its objects (`object_run`), a model of object
    samples (error, speed) and one with components chosen at load ("auto"), from the workdir
    alone; each event record carries its peak frame's objects, which are that frame's
    prepared boxes, highest score first. A model of object samples scores each tick's objects
    in the smallest of `crop_batch_sizes` that holds them, not always `eval.batch_size`."""
    from jaxvad import config as config_lib
    from jaxvad import inference, object_scores
    from jaxvad.data import pipeline
    from jaxvad.watch.objects import crop_batch_sizes

    found = request.getfixturevalue(run)
    workdir = copy_run(found, tmp_path / "run")
    evaluate.evaluate(found.config, workdir)
    evaluated = evaluated_scores(workdir, "Test001")
    config = found.config.copy_and_resolve_references()
    with config.unlocked():
        config.score.threshold_quantile = 0.3  # Events on the tiny model's clip.
        config.watch.open_after = 1
        config.watch.close_after = 1
    scores, events = tmp_path / "scores.csv", tmp_path / "events.jsonl"
    clip = object_run.source / "Test" / "Test001"
    batches = []  # (batch size, objects in it) of every model call while watching.
    step = inference.ErrorScorer.step

    def counted(self, params, batch, **kwargs):
        batches.append((batch["valid"].shape[0], int(np.asarray(batch["valid"]).sum())))
        return step(self, params, batch, **kwargs)

    monkeypatch.setattr(inference.ErrorScorer, "step", counted)
    watch(config, workdir, [f"cam={clip}"], scores=str(scores), events=str(events))
    if found.config.objects.samples:
        sizes = crop_batch_sizes(config.eval.batch_size, jax.device_count())
        assert batches and all(size == min(b for b in sizes if b >= n) for size, n in batches)
        assert min(size for size, _ in batches) < config.eval.batch_size
    else:
        assert not batches
    streamed = read_scores(scores)
    assert sorted(streamed) == sorted(evaluated)
    for frame, values in evaluated.items():
        np.testing.assert_allclose(streamed[frame], values, atol=1e-5, err_msg=f"frame {frame}")
    table = pipeline.open_prepared(config_lib.dataset_dir(found.config, needed_for="test"), "test")
    prepared = object_scores.read_objects(table)
    video = table.video_names.index("Test001")
    numbers = table.frame_index[table.frame_ids]
    got = [r for r in records(events) if r["type"] in ("open", "update", "close")]
    assert got
    for record in got:
        frame = np.flatnonzero(
            (table.video_index[table.frame_ids] == video) & (numbers == record["peak_frame"])
        )
        boxes = prepared.boxes[prepared.frame_position == frame[0]]
        listed = record["objects"]
        assert sorted(tuple(o["box"]) for o in listed) == sorted(map(tuple, boxes.tolist()))
        assert [o["score"] for o in listed] == sorted((o["score"] for o in listed), reverse=True)


def test_object_mode_explains_events_with_their_objects_and_refuses_mot_boxes(
    object_run, object_samples_run, tmp_path
):
    """Object mode `--explain`: every closed event gets one `explained` record whose folder's
    record scores the peak frame as the stream did and lists the event's objects; a run whose
    boxes came from MOT files is refused (watch has only the automatic detector)."""
    from jaxvad.watch.objects import ObjectScorer
    from jaxvad.watch.stream import StreamError

    workdir = copy_run(object_samples_run, tmp_path / "run")
    config = object_samples_run.config.copy_and_resolve_references()
    with config.unlocked():
        config.score.threshold_quantile = 0.3  # Events on the tiny model's clip.
        config.watch.open_after = 1
        config.watch.close_after = 1
    events = tmp_path / "events.jsonl"
    clip = str(object_run.source / "Test" / "Test001")
    watch(config, workdir, [f"cam={clip}"], events=str(events), explain=True)
    got = records(events)
    closes = {r["event"]: r for r in got if r["type"] == "close"}
    explained = {r["event"]: r for r in got if r["type"] == "explained"}
    assert closes and set(explained) == set(closes)
    for event, record in explained.items():
        (explanation,) = records(Path(record["folder"]) / "records.jsonl")
        assert explanation["score"] == pytest.approx(closes[event]["peak_score"], abs=1e-5)
        boxes = [o["box"] for o in explanation["objects"]]
        assert boxes == [o["box"] for o in closes[event]["objects"]]
        assert explanation["heatmap"] == explanation["images"]["anomaly_foreground"]
    config = object_run.config.copy_and_resolve_references()
    with config.unlocked():
        config.data.objects = f"mot:{tmp_path}"  # A run prepared from a detector's files.
    with pytest.raises(StreamError, match="automatic detector only"):
        ObjectScorer(types.SimpleNamespace(config=config), ["cam"])
