"""Streaming scores: per camera a ring buffer of its newest flows and, on the device, of its
past frames' cached model work; one jitted call per tick for every camera with a new frame.

Per frame, once, when it arrives (`CameraWindow.push`, run for all cameras in a thread pool):
the frame is resized to S × S with the dataset preparation's area resize
(`video_io.resize_frame`), converted to the model's channels, and its optical flow from the
camera's previous frame is computed on the resized grayscale frames with the run's method, in
the stored dataset's units and precision (float16). The host keeps the T + 1 newest flows and
the previous grayscale frame.

Per tick (`StreamScorer.score`, `inference.stream_step`): a batch of fixed shape, `slots` rows
(the cameras, rounded up to the devices of the mesh's batch axes; rows without a new frame are
padding), holds each new frame t with its T past flows and its own flow. The model scores
frame t from the device-side cache of its T past frames' per-frame work
(`VadModel.cached_frame`), then appends frame t's. The errors become scores through the
detector's normalisation with the training statistics (`Detector.scores`), so a file's
streamed scores are its evaluated ones.

What each frame costs, and what is recomputed (`VadModel.maps_from_cache`):
- predictor: a frame's spatial tokens are computed once, when it arrives. The temporal
  transformer over the T cached tokens, the motion encoder over the T + 1 flows, the fusion and
  the decoders run again for every frame: the temporal position embedding is absolute within
  the window and the 3D convolutions pad the window's ends, so neither a frame's keys and
  values nor its motion features stay the same as the window slides.
- motion_mae, mdsf: nothing needs caching. They score frame t from frame t alone (and, for
  motion_mae, its flow); their window of T = 1 past frame is read by neither, so each frame's
  work is done once, when it is scored (the cache holds the past frame, unused).
The first T frames of a camera fill the cache and get no score, as in evaluation.
Memory per camera: (T + 1)·S²·(C + 4) bytes of frames and flows on the host and T cached
frames on the device, whatever the stream's length.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxvad import distributed, inference, scoring
from jaxvad.data import flow as flow_lib
from jaxvad.data.video_io import convert_channels, resize_frame, to_gray


class StreamError(ValueError):
    """A run or setting that cannot be streamed."""


class CameraWindow:
    """One camera's host state (see the module docstring): its T + 1 newest frames
    `[S, S, C]` uint8 (`frame`: the newest; the others are kept for `--explain`'s windows),
    flows `[S, S, 2]` float16 and frame numbers; `count`: frames pushed so far."""

    def __init__(self, *, size: int, history: int, channels: int, flow: str):
        self.size, self.history, self.channels = size, history, channels
        self._flow = flow_lib.flow_function(flow)
        self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=history + 1)
        self.flows: collections.deque[np.ndarray] = collections.deque(maxlen=history + 1)
        self.numbers: collections.deque[int] = collections.deque(maxlen=history + 1)
        self._gray: np.ndarray | None = None
        self.count = 0

    def push(self, number: int, image: np.ndarray) -> None:
        """Adds frame `number` (`[H, W, C]` uint8, RGB or gray) and the flow into it."""
        self.push_resized(number, resize_frame(image, self.size))

    def push_resized(self, number: int, small: np.ndarray) -> None:
        """`push` of the frame already resized to S × S (`video_io.resize_frame`)."""
        gray = to_gray(small[None])[0]
        if self._gray is None:
            flow = np.zeros((self.size, self.size, 2), np.float32)
        else:
            flow = self._flow(self._gray, gray) / flow_lib.flow_scale(self.size)
        self._gray = gray
        self.frames.append(convert_channels(small, self.channels))
        self.flows.append(flow.astype(np.float16))
        self.numbers.append(number)
        self.count += 1

    wants = True  # It takes its source's next frame every tick (`ObjectCamera` may not).
    busy = False  # No frame of its source waits in it.

    def take(self, item: tuple[int, np.ndarray] | None, ended: bool) -> bool:
        """Pushes the source's next frame `item` ((number, image) or None; `ended`: whether
        the source has ended, unused here); returns whether a frame was pushed."""
        if item is None:
            return False
        self.push(*item)
        return True

    @property
    def frame(self) -> np.ndarray:
        """The newest frame `[S, S, C]` uint8."""
        return self.frames[-1]

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the T + 1 newest frames `[T + 1, S, S, C]` and flows (the newest frame's
        window, what `--explain` explains)."""
        return np.stack(self.frames), np.stack(self.flows)

    @property
    def ready(self) -> bool:
        """Whether the newest frame has a full history (t > T), so a score."""
        return self.count > self.history

    def sample(self) -> dict[str, np.ndarray]:
        """The newest frame t's part of a tick: `flows` `[T, S, S, 2]` (into frames
        t − T .. t − 1; zeros where the camera has fewer), `target_frame`, `target_flow`."""
        flows = list(self.flows)
        missing = self.history + 1 - len(flows)
        past = [np.zeros_like(flows[0])] * missing + flows[:-1]
        return {"flows": np.stack(past), "target_frame": self.frame, "target_flow": flows[-1]}


@dataclasses.dataclass(frozen=True)
class FrameScore:
    """One scored frame: the camera's `slot`, the frame `number` (from 1 in arrival order),
    `score`, `score_rgb`, `score_flow` (the normalised components, as `frame_scores.csv`'s);
    in object mode its `objects` (`{"box", "track", "score"}`, highest first) and, for a model
    of object samples, the `modality` of its top object (`jaxvad.watch.objects`); `details`:
    fields events record of a peak (a weak run's category and similarity, `jaxvad.watch.
    weak`)."""

    slot: int
    number: int
    score: float
    score_rgb: float
    score_flow: float
    objects: list[dict] | None = None
    modality: str | None = None
    details: dict | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """What `jaxvad.watch` streams: the run's `config`, its alarm `threshold`, the `scorer`
    (`score(cameras, rows)` → the `FrameScore`s of a tick), one camera per source (`take`,
    `wants`, `busy`, as `CameraWindow`) and their `CameraWindow`s for `--explain` (None: a
    weakly supervised run, `jaxvad.watch.weak`)."""

    config: ml_collections.ConfigDict
    threshold: float
    scorer: Any
    cameras: list
    windows: list[CameraWindow] | None


class StreamScorer:
    """The streaming step over a fixed batch of `slots` cameras per tick (module docstring).

    Args:
      graphdef, params: the model (`nnx.split(model, nnx.Param)`), parameters on the mesh.
      history: T, past frames per window.
      sharding: the batch's layout on the mesh (`ErrorScorer.data_sharding`).
      scores: errors → scores, e.g. `Detector.scores` (normalised with training statistics).
      cameras: the cameras' names, one slot each.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        *,
        history: int,
        sharding: jax.sharding.NamedSharding,
        scores: Callable[[scoring.SplitErrors], scoring.Scores],
        cameras: Sequence[str],
    ):
        self.graphdef, self.params, self.history = graphdef, params, history
        self.sharding, self._scores = sharding, scores
        self.cameras = list(cameras)
        shards = distributed.batch_shards(sharding)
        self.slots = -(-len(self.cameras) // shards) * shards
        self._blank: dict[str, np.ndarray] | None = None
        self._cache: jax.Array | None = None
        self._step = jax.jit(
            functools.partial(inference.stream_step, graphdef=graphdef), donate_argnums=1
        )

    @classmethod
    def of_detector(cls, detector, cameras: Sequence[str], objects: bool = False) -> StreamScorer:
        """The scorer of a frame-level `jaxvad.detector.Detector` (StreamError for a run or
        score settings that cannot stream); `objects`: the frame errors of a frame model in
        object mode (`jaxvad.watch.objects`, whose scores replace the frames')."""
        if detector.settings.object_mode and not objects:
            raise StreamError(
                "this run scores frames from their objects: it streams through "
                "jaxvad.watch.objects.ObjectScorer"
            )
        check_streamable(detector.settings)
        return cls(
            detector.graphdef,
            detector.params,
            history=detector.config.history,
            sharding=detector.scorer.data_sharding,
            scores=detector.scores,
            cameras=cameras,
        )

    def score(self, windows: Sequence[CameraWindow], rows: Sequence[int]) -> list[FrameScore]:
        """One tick: the cameras `rows` have a new frame (pushed into `windows`); returns the
        scores of those whose new frame has a full history."""
        errors = self.errors(windows, rows)
        if not len(errors.video):
            return []
        scores = self._scores(errors)
        return [
            FrameScore(
                int(errors.video[i]),
                int(errors.frame[i]),
                float(scores.score[i]),
                float(scores.rgb[i]),
                float(scores.flow[i]),
            )
            for i in range(len(errors.video))
        ]

    def errors(self, windows: Sequence[CameraWindow], rows: Sequence[int]) -> scoring.SplitErrors:
        """The tick's step (`score`): the errors of the new frames of cameras `rows` that have
        a full history, one row each (`video`: the camera's slot, `frame`: its number)."""
        if not rows:
            return scoring.SplitErrors(
                names=self.cameras,
                video=np.zeros(0, np.int32),
                frame=np.zeros(0, np.int32),
                scored=np.zeros(0, bool),
                rgb=np.zeros(0),
                flow=np.zeros(0),
            )
        samples = {slot: windows[slot].sample() for slot in rows}
        if self._blank is None:
            self._blank = {k: np.zeros_like(v) for k, v in next(iter(samples.values())).items()}
        batch = {
            key: np.stack([samples.get(s, self._blank)[key] for s in range(self.slots)])
            for key in self._blank
        }
        push = np.isin(np.arange(self.slots), rows)
        sharded = distributed.global_batch(batch | {"push": push}, self.sharding)
        if self._cache is None:
            self._cache = self._empty_cache(sharded["target_frame"].shape)
        out, self._cache = self._step(self.params, self._cache, sharded)
        out = jax.device_get(out)
        scored = [s for s in rows if windows[s].ready]
        return scoring.SplitErrors(
            names=self.cameras + [""] * (self.slots - len(self.cameras)),
            video=np.array(scored, np.int32),
            frame=np.array([windows[s].numbers[-1] for s in scored], np.int32),
            scored=np.ones(len(scored), bool),
            rgb=np.asarray(out["rgb"], np.float64)[scored],
            flow=np.asarray(out["flow"], np.float64)[scored],
        )

    def _empty_cache(self, frame_shape: tuple[int, ...]) -> jax.Array:
        """Zeros `[slots, T, ...]` of the model's `cached_frame`, laid out like the batch."""
        frame = jax.ShapeDtypeStruct(frame_shape, jnp.float32)
        shape = jax.eval_shape(
            lambda p, f: nnx.merge(self.graphdef, p).cached_frame(f), self.params, frame
        )
        cache = np.zeros((self.slots, self.history, *shape.shape[1:]), shape.dtype)
        return jax.device_put(cache, self.sharding)


def check_streamable(settings: scoring.ScoreSettings) -> None:
    """StreamError for score settings that need a whole video."""
    if settings.normalisation == "minmax" or settings.smoothing_sigma > 0:
        raise StreamError(
            "watch scores each frame as it arrives: per-video min-max normalisation and "
            "Gaussian smoothing need the whole video. Use --config.score.normalisation="
            "train --config.score.smoothing_sigma=0"
        )
