"""Object mode, streamed: per camera the objects of each frame as it arrives, and each tick's
frames scored from their objects (`jaxvad.object_scores`), as `jaxvad.evaluate` scores them.

Per camera (`ObjectCamera`), host side:
- the background model of the object detector (`jaxvad.data.objects.ObjectFinder`) is primed on
  the stream's first `prime` frames (`config.watch.prime_frames`) before any frame is scored:
  those frames wait, grey at the original resolution and resized to S × S, then go through as
  any other. The preparation primes a video on its last `BoxSettings.history` (500) frames, so
  a video of at most `prime` and 500 frames is primed on all of its frames either way, and its
  objects are those of its prepared copy; on a longer stream the first frames prime it. A
  source that ends while priming is primed on the frames it gave;
- then, frame by frame: the background model's update, the motion test (frame difference and
  the Farneback flow at the original resolution, from the previous frame), the boxes, the IoU
  tracks, and the velocity histograms (DIS flow from the previous frame), each computed once;
- the frame enters the camera's `CameraWindow` (its T + 1 newest S × S frames and flows).
While a camera works through the frames that waited, it takes no new one: a file waits for
it, a live source drops its oldest frames (`jaxvad.watch.sources`).
Memory per camera: the `CameraWindow`'s, and while priming `prime`·(H·W + S²·C) bytes.

Per tick (`ObjectScorer.score`), for the cameras whose new frame t has a full history (t > T):
- a model of object samples (`config.objects.samples`) scores each object's sample, cut from
  the camera's window as evaluation cuts it (`pipeline.crop_samples`), in batches of at most
  `eval.batch_size`, each padded to the smallest of a few fixed sizes that holds it
  (`crop_batch_sizes`: a tick of 9 objects runs a batch of 16, not 32; each size compiles once,
  the first time a tick needs it), with the deep features where a component reads them (the
  errors are computed whatever the components: they give the modality); a frame model gives
  the frames' own errors (`StreamScorer.errors`);
- the objects' components, their sum and the frame's maximum (`object_scores.score`), then the
  detector's normalisation with the training statistics (`Detector.scores`).
Each scored frame carries its objects, highest first (box, track, score), which events record,
and, for a model of object samples, its top object's modality (appearance or motion, its
errors against the training objects', as `jaxvad.explain` attributes a crop).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxvad import distributed, object_scores, scoring
from jaxvad.data import objects as object_lib
from jaxvad.data import pipeline
from jaxvad.data.video_io import resize_frame
from jaxvad.explain import attribution
from jaxvad.watch.stream import (
    CameraWindow,
    FrameScore,
    StreamError,
    StreamScorer,
    check_streamable,
)


def crop_batch_sizes(batch_size: int, shards: int) -> tuple[int, ...]:
    """The batch sizes a tick's object samples are padded to: `shards`·2^k below
    `batch_size`, then `batch_size` (a multiple of `shards`), ascending. A tick pads its
    objects to the smallest that holds them, so its model work follows the objects in view
    (at most twice them, or one per device) instead of always `batch_size`."""
    sizes = [shards]
    while sizes[-1] * 2 < batch_size:
        sizes.append(sizes[-1] * 2)
    return tuple(sorted({*sizes, batch_size}))


class ObjectCamera:
    """One camera's host state in object mode (the module docstring): its `window`, the
    newest frame's `objects` (`object_lib.FrameObjects`, None before frame 1), its frames'
    original (height, width) `frame_size`."""

    def __init__(self, window: CameraWindow, prime: int):
        if prime < 1:
            raise ValueError(f"prime must be at least 1, not {prime}")
        self.window, self.prime = window, prime
        self.objects: object_lib.FrameObjects | None = None
        self.frame_size: tuple[int, int] | None = None
        self._finder: object_lib.ObjectFinder | None = None
        self._waiting: collections.deque[tuple[int, np.ndarray, np.ndarray]] = collections.deque()

    @property
    def wants(self) -> bool:
        """Whether it takes a new frame this tick: while priming, or once the frames that
        waited have gone through."""
        return self._finder is None or not self._waiting

    @property
    def busy(self) -> bool:
        """Whether frames wait (priming, or primed and not yet through)."""
        return bool(self._waiting)

    def take(self, item: tuple[int, np.ndarray] | None, ended: bool) -> bool:
        """Receives the source's next frame `item` ((number, `[H, W, C]` uint8) or None) and
        whether the source has `ended`; pushes at most one frame through (returns whether it
        did)."""
        if item is not None:
            number, image = item
            if self.frame_size is None:
                self.frame_size = (int(image.shape[0]), int(image.shape[1]))
            small = resize_frame(image, self.window.size)
            self._waiting.append((number, object_lib.grey_frame(image), small))
        if self._finder is None:
            if not self._waiting or (len(self._waiting) < self.prime and not ended):
                return False
            priming = np.stack([grey for _, grey, _ in self._waiting])
            self._finder = object_lib.ObjectFinder(priming, detect=True)
        if not self._waiting:
            return False
        number, grey, small = self._waiting.popleft()
        self.window.push_resized(number, small)
        found = self._finder.push(grey)
        self.objects = found[-1] if found else None
        return True


@dataclasses.dataclass(frozen=True)
class _Tick:
    """The scored frames of a tick: `rows` the cameras (slots), `objects` theirs
    (`frame_position` indexes `rows`)."""

    rows: list[int]
    objects: object_scores.SplitObjects


class ObjectScorer:
    """Object mode's per-tick scores (the module docstring) for a `jaxvad.detector.Detector`
    in object mode and the cameras' names."""

    def __init__(self, detector, cameras: Sequence[str]):
        config = detector.config
        if config.data.objects != "auto":
            raise StreamError(
                f"this run's objects come from {config.data.objects!r}: watch finds a "
                "stream's objects with the automatic detector only (data.objects='auto')"
            )
        check_streamable(detector.settings)
        self.detector, self.cameras = detector, list(cameras)
        self.samples = bool(config.objects.samples)
        self.frames = None if self.samples else StreamScorer.of_detector(detector, cameras, True)
        self._batch = config.eval.batch_size
        shards = distributed.batch_shards(detector.scorer.data_sharding)
        self._sizes = crop_batch_sizes(self._batch, shards)

    def score(self, cameras: Sequence[ObjectCamera], rows: Sequence[int]) -> list[FrameScore]:
        """One tick: the cameras `rows` pushed a new frame; the scores of those whose new
        frame has a full history."""
        windows = [c.window for c in cameras]
        if self.frames is not None:
            errors = self.frames.errors(windows, rows)
        else:
            scored = [s for s in rows if windows[s].ready]
            errors = scoring.SplitErrors(
                names=self.cameras,
                video=np.array(scored, np.int32),
                frame=np.array([windows[s].numbers[-1] for s in scored], np.int32),
                scored=np.ones(len(scored), bool),
                rgb=np.zeros(len(scored)),
                flow=np.zeros(len(scored)),
            )
        if not len(errors.video):
            return []
        tick = self._tick(cameras, [int(s) for s in errors.video])
        object_errors = None
        if self.samples and len(tick.objects.boxes):
            object_errors = self._errors(cameras, tick)
        objects = tick.objects
        if object_errors is not None and object_errors.features is not None:
            objects = dataclasses.replace(objects, deep=object_errors.features)
        found = object_scores.score(objects, self.detector.objects, object_errors)
        scores = self.detector.scores(errors, found)
        modality = self._modality(found, object_errors)
        out = []
        for i, slot in enumerate(tick.rows):
            mine = np.flatnonzero(objects.frame_position == i)
            mine = mine[np.argsort(-found.score[mine], kind="stable")]
            out.append(
                FrameScore(
                    slot,
                    int(errors.frame[i]),
                    float(scores.score[i]),
                    float(scores.rgb[i]),
                    float(scores.flow[i]),
                    objects=[
                        {
                            "box": [float(v) for v in objects.boxes[m]],
                            "track": int(objects.tracks[m]),
                            "score": float(found.score[m]),
                        }
                        for m in mine
                    ],
                    modality=None if modality is None or not len(mine) else modality[mine[0]],
                )
            )
        return out

    def _tick(self, cameras: Sequence[ObjectCamera], rows: list[int]) -> _Tick:
        """The objects of the scored frames of cameras `rows` (a frame without any has none)."""
        empty = np.zeros((0, 4), np.float32)
        found = [cameras[s].objects for s in rows]
        boxes = [empty if f is None else f.boxes for f in found]
        tracks = [np.zeros(0, np.int32) if f is None else f.tracks for f in found]
        bins = object_lib.VELOCITY_BINS
        velocity = [np.zeros((0, bins), np.float32) if f is None else f.velocity for f in found]
        objects = object_scores.SplitObjects.from_frames(boxes, tracks, velocity, [1] * len(rows))
        slots = np.array(rows, np.int32)[objects.frame_position]  # Each object's camera.
        return _Tick(rows, dataclasses.replace(objects, video=slots))

    def _errors(self, cameras: Sequence[ObjectCamera], tick: _Tick) -> scoring.SplitErrors:
        """The model's errors (and deep features) of the tick's objects' samples, one row
        per object."""
        config, objects = self.detector.config, tick.objects
        o = config.objects
        samples: list[dict[str, np.ndarray]] = []
        for i, slot in enumerate(tick.rows):
            mine = np.flatnonzero(objects.frame_position == i)
            if not len(mine):
                continue
            camera = cameras[slot]
            frames, flows = camera.window.window()
            window = {
                "frames": frames[:-1],
                "flows": flows[:-1],
                "target_frame": frames[-1],
                "target_flow": flows[-1],
            }
            regions = pipeline.stored_boxes(
                objects.boxes[mine],
                np.tile(camera.frame_size, (len(mine), 1)),
                camera.window.size,
                o.margin,
            )
            repeated = {k: np.broadcast_to(v, (len(mine), *v.shape)) for k, v in window.items()}
            samples.append(pipeline.crop_samples(repeated, regions, o.size))
        batch = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
        count = len(batch["frames"])
        parts = []
        scorer, params = self.detector.scorer, self.detector.params
        deep = self.detector.objects.deep
        for start in range(0, count, self._batch):
            part = {k: v[start : start + self._batch] for k, v in batch.items()}
            n = len(part["frames"])
            size = next(b for b in self._sizes if b >= n)
            padded = {
                k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
                for k, v in part.items()
            }
            valid = np.arange(size) < n
            padded |= {
                "video_index": np.zeros(size, np.int32),
                "frame_index": np.zeros(size, np.int32),
                "label": np.zeros(size, np.int32),
                "scored": valid,
                "valid": valid,
            }
            sharded = distributed.global_batch(padded, scorer.data_sharding)
            out = jax.device_get(scorer.step(params, sharded, maps=False, features=deep))
            keys = ("rgb", "flow", "features") if deep else ("rgb", "flow")
            parts.append({k: np.asarray(out[k])[:n] for k in keys})
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return scoring.SplitErrors(
            names=self.cameras,
            video=objects.video,
            frame=np.zeros(count, np.int32),
            scored=np.ones(count, bool),
            rgb=rows["rgb"].astype(np.float64),
            flow=rows["flow"].astype(np.float64),
            features=rows["features"].astype(np.float32) if deep else None,
        )

    def _modality(
        self, found: object_scores.ObjectScores, errors: scoring.SplitErrors | None
    ) -> list[str] | None:
        """Per object appearance or motion (its errors against the training objects'), for a
        model of object samples; None otherwise."""
        reference = self.detector.objects.attribution
        if errors is None or reference is None:
            return None
        z = attribution.training_z(errors, reference.train)
        return [attribution.modality(r, f) for r, f in zip(z["rgb"], z["flow"], strict=True)]
