"""A weakly supervised run (`aadc`), streamed: per camera the CLIP features of its snippets as
their frames arrive, and each new snippet scored and named by its category.

Per camera (`WeakCamera`), host side, each frame once:
- with object fusion (`data.objects = "auto"`) the object detector
  (`jaxvad.data.objects.ObjectFinder`) is primed on the stream's first `prime` frames
  (`config.watch.prime_frames`), as `jaxvad.watch.objects` primes it; the preparation of the
  features (`jaxvad.features`) primes a video on its last 500 frames, so a video of at most
  `prime` and 500 frames gets the boxes of its feature file. Then each frame's boxes come out
  as the frames arrive (frame 0's with frame 1's);
- once a snippet's F = `data.snippet_frames` frames have their boxes, their features are
  computed in one call, as `jaxvad.features` computes a video's (`clip_features.
  frame_features`, the centre view, `[frame, max over its objects]` with fusion), and pooled
  into the snippet's feature (their mean); a source that ends pads its last snippet with its
  last frame, as the features do;
- the camera keeps the features of its last L = `data.snippets` snippets.
Memory per camera: F frames (and up to `prime` while priming) at the original resolution and
L·D floats, whatever the stream's length.

Per tick (`WeakScorer.score`), for the cameras with a new snippet: one jitted call on a batch
of fixed shape `[cameras, L, D]` (each camera's last snippets, the newest last within its
length), the model's score of the newest snippet and its similarities with the class texts.
Each of the snippet's frames gets its score, as evaluation repeats a snippet's score over its
frames, with the snippet's category: the anomaly class (never the normal one) whose text is
most similar, and that cosine similarity. Evaluation scores a snippet within its chunk of L
snippets, seeing the snippets after it too (the MTN's convolutions and self-attention look
both ways); a stream has no future, so the newest snippet is scored from the L up to it, and
the two scores differ (`jaxvad.watch` documents by how much on the synthetic set).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxvad import config as config_lib
from jaxvad import detector as detector_lib
from jaxvad import weak_scoring
from jaxvad.data import objects as object_lib
from jaxvad.data.clip_features import frame_features, pool_snippets, rgb
from jaxvad.vlm.clip import Clip
from jaxvad.watch.stream import FrameScore, Run, StreamError

MODALITY = "n/a"  # A weak model's score has no appearance and motion terms.

Features = Callable[[np.ndarray, list[np.ndarray] | None], np.ndarray]


def clip_features(clip: Clip, batch: int) -> Features:
    """Frames `[N, H, W, 3]` uint8 RGB and their boxes (None: no fusion) → `[N, D]` features,
    as `jaxvad.features --crops=1` computes them."""
    return lambda frames, boxes: frame_features(clip, frames, boxes, crops=1, batch=batch)[0]


class WeakCamera:
    """One camera's host state (the module docstring). `snippets`: the features of its last
    L snippets; `numbers`: the frame numbers of its newest snippet, `fresh`: whether that
    snippet is not scored yet."""

    def __init__(self, features: Features, *, snippet: int, length: int, objects: bool, prime: int):
        if prime < 1:
            raise ValueError(f"prime must be at least 1, not {prime}")
        self.features, self.snippet, self.prime = features, snippet, prime
        self.objects = objects
        self.snippets: collections.deque[np.ndarray] = collections.deque(maxlen=length)
        self.numbers: list[int] = []
        self.fresh = False
        self._waiting: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._unboxed: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._current: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self._finder: object_lib.ObjectFinder | None = None

    @property
    def wants(self) -> bool:
        """Whether it takes a new frame this tick: not while primed frames wait."""
        return self._finder is None or not self._waiting

    @property
    def busy(self) -> bool:
        """Whether frames wait in it (priming, or a snippet not yet complete)."""
        return bool(self._waiting or self._unboxed or self._current)

    def take(self, item: tuple[int, np.ndarray] | None, ended: bool) -> bool:
        """Receives the source's next frame `item` ((number, `[H, W, C]` uint8) or None) and
        whether the source has `ended`; moves at most one frame on. Returns whether a new
        snippet is complete (then `fresh`)."""
        if item is not None:
            number, image = item
            self._waiting.append((number, rgb(np.asarray(image)[None])[0]))
        if self.objects and self._finder is None:
            if not self._waiting or (len(self._waiting) < self.prime and not ended):
                return False
            grey = np.stack([object_lib.grey_frame(f) for _, f in self._waiting])
            self._finder = object_lib.ObjectFinder(grey, detect=True, velocity=False)
        if self._waiting:
            number, frame = self._waiting.popleft()
            if self._finder is None:
                self._current.append((number, frame, None))
            else:
                self._unboxed.append((number, frame))
                for found in self._finder.push(object_lib.grey_frame(frame)):
                    self._current.append((*self._unboxed.popleft(), found.boxes))
        if ended and not self._waiting and self._finder is not None:
            for found in self._finder.finish():
                self._current.append((*self._unboxed.popleft(), found.boxes))
        full = len(self._current) >= self.snippet
        if full or (ended and not self._waiting and not self._unboxed and self._current):
            self._close_snippet()
            return True
        return False

    def _close_snippet(self) -> None:
        part, self._current = self._current[: self.snippet], self._current[self.snippet :]
        frames = np.stack([frame for _, frame, _ in part])
        boxes = [b for _, _, b in part] if self.objects else None
        feature = pool_snippets(self.features(frames, boxes), self.snippet)[-1]
        self.snippets.append(feature)
        self.numbers, self.fresh = [number for number, _, _ in part], True


class WeakScorer:
    """Scores each camera's newest snippet (the module docstring).

    Args:
      graphdef, params: the `aadc` model.
      classes: the class names, the normal class first.
      length: L, the snippets the model sees.
      cameras: the cameras' names, one row each.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        *,
        classes: Sequence[str],
        length: int,
        cameras: Sequence[str],
    ):
        self.graphdef, self.params, self.classes = graphdef, params, list(classes)
        self.length, self.cameras = length, list(cameras)
        self._forward = jax.jit(weak_scoring.forward, static_argnums=0)

    def score(self, cameras: Sequence[WeakCamera], rows: Sequence[int]) -> list[FrameScore]:
        """One tick: the cameras `rows` completed a snippet; the scores of its frames."""
        rows = [r for r in rows if cameras[r].fresh]
        if not rows:
            return []
        width = len(cameras[rows[0]].snippets[-1])
        features = np.zeros((len(cameras), self.length, width), np.float32)
        lengths = np.ones(len(cameras), np.int32)
        for r in rows:
            window = np.stack(cameras[r].snippets)
            features[r, : len(window)], lengths[r] = window, len(window)
        scores, similarity = jax.device_get(
            self._forward(self.graphdef, self.params, jnp.asarray(features), jnp.asarray(lengths))
        )
        result = []
        for r in rows:
            newest = lengths[r] - 1
            category = 1 + int(np.argmax(similarity[r, newest, 1:]))
            details = {
                "category": self.classes[category],
                "similarity": round(float(similarity[r, newest, category]), 4),
            }
            score = float(scores[r, newest])
            cameras[r].fresh = False
            result += [
                FrameScore(
                    r, n, score, float("nan"), float("nan"), modality=MODALITY, details=details
                )
                for n in cameras[r].numbers
            ]
        return result


def is_weak_run(workdir: Path) -> bool:
    """Whether the checkpoint of `workdir` (`detector.run_checkpoint`) is a weakly supervised
    model's."""
    checkpoints, step = detector_lib.run_checkpoint(workdir)
    try:
        return checkpoints.config(step)["model"]["name"] in config_lib.WEAK_MODELS
    finally:
        checkpoints.close()


def load(config: ml_collections.ConfigDict | None, workdir: Path, cameras: Sequence[str]) -> Run:
    """The weak run of `workdir` (`config`: overrides, or None) ready to stream `cameras`: its
    scorer, one `WeakCamera` each, and its alarm threshold `config.explain.alarm_score`."""
    config, data, graphdef, params, _ = weak_scoring.load(config, workdir)
    if data.objects not in ("none", "auto"):
        raise StreamError(
            f"this run's features fuse objects from {data.objects!r}: watch finds a stream's "
            "objects with the automatic detector only (data.objects='auto' or 'none')"
        )
    features = clip_features(Clip.load(data.clip), batch=data.snippet_frames)
    classes = data.split("train").classes
    scorer = WeakScorer(graphdef, params, classes=classes, length=data.snippets, cameras=cameras)
    made = [
        WeakCamera(
            features,
            snippet=data.snippet_frames,
            length=data.snippets,
            objects=data.objects == "auto",
            prime=config.watch.prime_frames,
        )
        for _ in cameras
    ]
    return Run(config, float(config.explain.alarm_score), scorer, made, None)
