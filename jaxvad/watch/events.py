"""Events: a threshold with hysteresis over each camera's frame scores, written as JSON lines.

Per camera (`Hysteresis`): an event opens at the `open_after`-th consecutive frame above the
threshold (its first frame is the first of that run) and closes at the `close_after`-th
consecutive frame at or below it (its last frame is the last one above); frames in between,
above or not, belong to it. `config.watch.open_after` and `close_after` set k and m.

Records (`EventLog`, one JSON object per line, flushed and fsynced as it is written):
- `open`, `update` (the peak rose; at most one per `update_every_s` seconds of wall time per
  event) and `close`, each with `event` (the id `<camera>#<n>`, n counting that camera's events
  over every run that appended to the file), `camera`, `first_frame`, `peak_frame`,
  `last_frame`, their wall-clock times (`*_time`, ISO 8601, UTC), `peak_score`, `modality`
  ("motion" when the peak's normalised flow error is the larger, else "appearance",
  `jaxvad.explain.attribution`; in object mode with a model of object samples, the peak's top
  object's), `threshold`, in object mode `objects` (the peak frame's boxes, tracks and
  scores, highest first), for a weakly supervised run (`jaxvad.watch.weak`) the peak's
  `category` and its text `similarity` (its modality "n/a"), and for `close` a `reason`:
  "scores fell" (the hysteresis), "stopped" (SIGINT/SIGTERM or the sources ended) or
  "restart" (a run that died before closing it, closed by the next run that opens the file);
- `outage`: a network source that dropped and came back, `camera`, `started`, `ended`,
  `seconds`, `error`;
- `explained` (`--explain`, `jaxvad.watch.explainer`): a closed event's peak explained.
A run appends to the file: records already there are kept, ids continue, and an event left
open by a killed run is closed once ("restart"), so no event is lost or written twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jaxvad.explain.attribution import modality


class EventsFileError(ValueError):
    """An events file from earlier runs that is not JSON lines."""


Sink = Callable[[dict[str, Any]], None]  # Receives every record written (e.g. a webhook).


def iso(seconds: float) -> str:
    """Wall-clock `seconds` (time.time()) as ISO 8601 UTC with milliseconds."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass
class Event:
    """An open event of one camera (see the module docstring)."""

    id: str
    camera: str
    first_frame: int
    first_time: float
    peak_frame: int
    peak_time: float
    peak_score: float
    modality: str
    last_frame: int
    last_time: float
    updated: float = 0.0
    peak_objects: list[dict[str, Any]] | None = None
    peak_details: dict[str, Any] | None = None  # Fields of the peak (a weak run's category).

    def record(self, kind: str, threshold: float, **extra: Any) -> dict[str, Any]:
        objects = {} if self.peak_objects is None else {"objects": self.peak_objects}
        objects |= self.peak_details or {}
        return {
            "type": kind,
            "event": self.id,
            "camera": self.camera,
            "first_frame": self.first_frame,
            "peak_frame": self.peak_frame,
            "last_frame": self.last_frame,
            "first_time": iso(self.first_time),
            "peak_time": iso(self.peak_time),
            "last_time": iso(self.last_time),
            "peak_score": self.peak_score,
            "modality": self.modality,
            "threshold": threshold,
            **objects,
            **extra,
        }


@dataclasses.dataclass
class Hysteresis:
    """One camera's state: the run of frames above (`above`: (frame, time, score, modality,
    objects, details) of each) or below the threshold, and its open `event`."""

    open_after: int
    close_after: int
    above: list[tuple[int, float, float, str, list | None, dict | None]] = dataclasses.field(
        default_factory=list
    )
    below: int = 0
    event: Event | None = None


class EventLog:
    """Every camera's hysteresis, writing records to `path` (appending) and to `sinks`.

    Args:
      path: the JSON-lines file; its folder is created.
      cameras: the cameras' names.
      threshold: the alarm threshold (`Detector.threshold`).
      open_after, close_after: k and m of the hysteresis.
      update_every_s: the least wall time between two `update` records of one event.
      sinks: callables given every record after it is written (they must not block).
    """

    def __init__(
        self,
        path: Path,
        cameras: Iterable[str],
        *,
        threshold: float,
        open_after: int,
        close_after: int,
        update_every_s: float = 1.0,
        sinks: Iterable[Sink] = (),
    ):
        if open_after < 1 or close_after < 1:
            raise ValueError("open_after and close_after must be at least 1")
        self.path = Path(path)
        self.threshold = threshold
        self.update_every_s = update_every_s
        self.sinks = list(sinks)
        self.states = {c: Hysteresis(open_after, close_after) for c in cameras}
        self._lock = threading.Lock()  # Outages are written from the reader threads.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        counts, left_open = _read_existing(self.path)
        self._counts = counts
        self._file = self.path.open("a", encoding="utf-8")
        for record in left_open:
            self.write(record | {"type": "close", "reason": "restart"})

    def open_events(self) -> int:
        return sum(s.event is not None for s in self.states.values())

    def update(
        self,
        camera: str,
        frame: int,
        score: float,
        score_rgb: float,
        score_flow: float,
        now: float,
        *,
        objects: list[dict[str, Any]] | None = None,
        what: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> str | None:
        """Feeds one scored frame of `camera` (its wall-clock time `now`); returns the id of
        the event it closed, if it closed one. In object mode `objects`: the frame's (box,
        track, score), which the event records of its peak, and `what`: the modality when the
        frame's normalised errors do not give it (a model of object samples)."""
        state = self.states[camera]
        if score > self.threshold:
            state.below = 0
            what = what or modality(score_rgb, score_flow)
            if state.event is None:
                state.above.append((frame, now, score, what, objects, details))
                if len(state.above) >= state.open_after:
                    self._open(camera, state)
                return None
            event = state.event
            event.last_frame, event.last_time = frame, now
            if score > event.peak_score:
                event.peak_frame, event.peak_time, event.peak_score = frame, now, score
                event.modality, event.peak_objects = what, objects
                event.peak_details = details
                if now - event.updated >= self.update_every_s:
                    event.updated = now
                    self.write(event.record("update", self.threshold))
            return None
        state.above.clear()
        if state.event is None:
            return None
        state.below += 1
        if state.below < state.close_after:
            return None
        return self._close(state, "scores fell")

    def pending(self, camera: str) -> bool:
        """Whether `camera` has an open event or frames above the threshold that may open one
        (what `--explain` keeps a peak window for)."""
        state = self.states[camera]
        return state.event is not None or bool(state.above)

    def _open(self, camera: str, state: Hysteresis) -> None:
        self._counts[camera] = self._counts.get(camera, 0) + 1
        peak = max(state.above, key=lambda a: a[2])
        first, last = state.above[0], state.above[-1]
        state.event = Event(
            f"{camera}#{self._counts[camera]}",
            camera,
            first[0],
            first[1],
            peak[0],
            peak[1],
            peak[2],
            peak[3],
            last[0],
            last[1],
            updated=last[1],
            peak_objects=peak[4],
            peak_details=peak[5],
        )
        state.above.clear()
        self.write(state.event.record("open", self.threshold))

    def _close(self, state: Hysteresis, reason: str) -> str:
        event = state.event
        self.write(event.record("close", self.threshold, reason=reason))
        state.event, state.below = None, 0
        return event.id

    def outage(self, camera: str, started: float, ended: float, error: str) -> None:
        """Writes an `outage` record (a network source that dropped and came back)."""
        self.write(
            {
                "type": "outage",
                "camera": camera,
                "started": iso(started),
                "ended": iso(ended),
                "seconds": round(ended - started, 3),
                "error": error,
            }
        )

    def close_events(self) -> dict[str, str]:
        """Closes every open event ("stopped"); returns {camera: event id} of those closed."""
        return {
            camera: self._close(state, "stopped")
            for camera, state in self.states.items()
            if state.event is not None
        }

    def close(self) -> None:
        """Closes every open event ("stopped") and the file."""
        self.close_events()
        with self._lock:
            self._file.close()

    def write(self, record: dict[str, Any]) -> None:
        """Appends `record` (flushed, fsynced; thread-safe) and hands it to the sinks."""
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        for sink in self.sinks:
            sink(record)


def _read_existing(path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Of an events file from earlier runs: per camera its events' count (the largest n of its
    ids), and the last record of each event opened but never closed. A torn last line (a run
    killed mid-write) is cut off, so the file stays JSON lines."""
    if not path.is_file():
        return {}, []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    counts: dict[str, int] = {}
    last: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EventsFileError(f"{path}:{number}: not a JSON line ({e.msg})") from None
        if "event" not in record:
            continue
        camera, n = record["event"].rsplit("#", 1)
        counts[camera] = max(counts.get(camera, 0), int(n))
        if record["type"] == "close":
            last.pop(record["event"], None)
        elif record["type"] in ("open", "update"):
            last[record["event"]] = record
    left = [{k: v for k, v in r.items() if k != "reason"} for r in last.values()]
    return counts, left
