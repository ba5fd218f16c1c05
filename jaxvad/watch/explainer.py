"""Explanations of events off the scoring path (`--explain`): each closed event's peak frame,
with the images, record fields and caption of `jaxvad.explain`.

While an event is open (and while frames above the threshold may open one), each camera keeps
the window of its highest-scoring frame so far: its T + 1 frames and flows (`Peak`). When the
event closes, that window goes to a thread that explains it as `jaxvad.explain` explains a
video (`explain.command.explain_source` on a one-video table of those frames and flows) into
`DIR/watch/explain/<camera>_<n>/`, and writes an `explained` record (the event, the folder, the
peak frame's stream number and its caption) to the events file. In object mode the window
carries the peak frame's objects, so the explanation names them, as `jaxvad.explain` does; the
original-resolution frames are not kept, so an object caption is BLIP's on the box cut from the
stored frame (the explanation's fallback). The queue is unbounded but
holds one window per closed event; at exit the pending ones are explained before watch returns.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxvad import detector as detector_lib
from jaxvad import object_scores
from jaxvad.data import pipeline
from jaxvad.data.objects import FrameObjects
from jaxvad.explain import command as explain_command
from jaxvad.explain.video import VideoFrames
from jaxvad.vlm import blip as blip_lib

log = logging.getLogger("jaxvad.watch")


@dataclasses.dataclass(frozen=True)
class Peak:
    """A candidate peak: its `score`, stream frame `number`, and window: `frames`
    `[T + 1, S, S, C]` uint8 (the T past frames and the frame) and `flows` `[T + 1, S, S, 2]`
    float16 (the flow into each); in object mode the frame's `objects` and the stream's
    original (height, width) `frame_size`, which its boxes are in."""

    score: float
    number: int
    frames: np.ndarray
    flows: np.ndarray
    objects: FrameObjects | None = None
    frame_size: tuple[int, int] | None = None


class Explainer:
    """A thread that explains the peaks of closed events (see the module docstring).

    Args:
      explain: (event id, peak) → (output folder, caption or None), e.g. `explain_peak`.
      write: writes a record to the events file (`EventLog.write`).
    """

    def __init__(
        self,
        explain: Callable[[str, Peak], tuple[Path, str | None]],
        write: Callable[[dict[str, Any]], None],
    ):
        self._explain, self._write = explain, write
        self._queue: queue.Queue = queue.Queue()
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="explain", daemon=True)
        self._thread.start()

    def submit(self, event: str, camera: str, peak: Peak) -> None:
        self._queue.put((event, camera, peak))

    def close(self) -> None:
        """Explains what is queued, then stops."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, camera, peak = item
            try:
                folder, caption = self._explain(event, peak)
            except Exception as e:  # A failed explanation is logged; scoring goes on.
                self.failed += 1
                log.warning("explaining %s failed: %s", event, e)
                continue
            self._write(
                {
                    "type": "explained",
                    "event": event,
                    "camera": camera,
                    "peak_frame": peak.number,
                    "peak_score": peak.score,
                    "folder": str(folder),
                    "caption": caption,
                }
            )


def explain_peak(
    detector: detector_lib.Detector,
    root: Path,
    *,
    captioner: blip_lib.Captioner | None = None,
) -> Callable[[str, Peak], tuple[Path, str | None]]:
    """The `explain` of an `Explainer`: a peak's window as a one-video table, explained by
    `explain.command.explain_source` (its frame with a full history, the window's last, is the
    only one scored) into `root/<camera>_<n>/`; returns the folder and the caption."""

    def explain(event: str, peak: Peak) -> tuple[Path, str | None]:
        name = event.replace("#", "_").replace("/", "_")
        n = len(peak.frames)
        table = pipeline.FrameTable(
            VideoFrames(peak.frames, detector.config.data.flow, flows=peak.flows),
            np.zeros(n, np.int64),
            np.arange(1, n + 1),
            name=name,
            split="watch",
            video_names=[name],
            frame_sizes=None if peak.frame_size is None else np.array([peak.frame_size]),
        )
        shown = f"event {event}: the window of its peak, stream frame {peak.number}"
        objects = None
        if peak.objects is not None:  # Object mode: the peak frame's objects, the window's last.
            bins = peak.objects.velocity.shape[1]
            empty = [np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros((0, bins))]
            objects = object_scores.SplitObjects.from_frames(
                [empty[0]] * (n - 1) + [peak.objects.boxes],
                [empty[1]] * (n - 1) + [peak.objects.tracks],
                [empty[2]] * (n - 1) + [peak.objects.velocity],
                [n],
            )
        source = explain_command.Input(table, name, shown, False, frozenset(), objects=objects)
        out = root / name
        records = explain_command.explain_source(detector, source, out, top=1, captioner=captioner)
        caption = records[0]["caption"] if records else None
        return out, caption

    return explain
