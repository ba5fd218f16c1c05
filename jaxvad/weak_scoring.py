"""Scoring and evaluating a weakly supervised model (`aadc`) on a weak test split.

`predict` scores every snippet of every test video (videos cut into `config.data.snippets`-long
chunks, as VadCLIP tests) and categorises each video; `split_metrics` computes, with
`jaxvad.weak_metrics`:

- `frame_auc`: frame ROC-AUC, the UCF-Crime protocol (every test frame pooled; each snippet's
  anomaly score repeated over its `snippet_frames` frames; frame labels from the test
  segments, frames past the video's end normal);
- `frame_ap`: frame average precision, the XD-Violence protocol (the same frames);
- `category_accuracy`: over the anomalous test videos, the share whose predicted class (argmax
  of the video's class logits γ·s_c, the top-K mean over all its snippets) is one of their
  categories;
- `map_per_iou` at IoU 0.1…0.5 and `map_average`: VadCLIP's detection mAP, each snippet's class
  probabilities softmax(γ·cos(F_t, t'_c)) → segments (`segments_from_scores`); ground truth: a
  test video's anomalous segments, once per category of the video; normal videos have none
  (VadCLIP's UCF-Crime protocol: the normal class has AP 0, still in the mean).

`evaluate` is `jaxvad.evaluate` for these models: the checkpoint of a workdir
(`detector.run_checkpoint`: the one chosen on held-out training videos when the run holds some
out, else the latest) → `WORKDIR/eval/metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxvad import atomic, distributed, metrics, weak_metrics
from jaxvad import config as config_lib
from jaxvad import detector as detector_lib
from jaxvad.data import weak, weak_input

log = logging.getLogger("jaxvad.weak_scoring")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per test video v: `scores[v]` `[t_v]` snippet anomaly scores in [0, 1],
    `similarity[v]` `[t_v, C]` per-snippet cosine similarities with the class texts,
    `class_probs[v]` `[t_v, C]` per-snippet class probabilities softmax(γ·similarity);
    `class_logits` `[V, C]` the videos' class logits; `video_scores` `[V]` the videos'
    anomaly scores, the top-K mean of their snippet scores (the MIL video score)."""

    scores: list[np.ndarray]
    similarity: list[np.ndarray]
    class_probs: list[np.ndarray]
    class_logits: np.ndarray
    video_scores: np.ndarray


def forward(
    graphdef: nnx.GraphDef, params: nnx.State, features: jax.Array, length: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """features `[B, T, D]`, length `[B]` → snippet scores `[B, T]` and similarities with the
    class texts `[B, T, C]` (`Aadc.forward`)."""
    out = nnx.merge(graphdef, params).forward(features, length)
    return out["scores"], out["similarity"]


# One compilation per model and batch shape, shared by every call (the trainer scores its
# held-out videos at every checkpoint).
_forward = jax.jit(forward, static_argnums=0)


def predict(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    split: weak_input.WeakSplit,
    *,
    snippets: int,
    batch_size: int,
) -> Predictions:
    """Scores crop 0 of every video of `split` (module docstring)."""
    model = nnx.merge(graphdef, params)
    gamma, k = model.gamma, model.k
    chunks, lengths, owner = [], [], []
    for v, video in enumerate(split.features):
        features = weak_input._load(video.files)[0]
        c, n = weak_input.test_chunks(features, snippets)
        chunks.append(c)
        lengths.append(n)
        owner += [v] * len(c)
    chunks, lengths, owner = np.concatenate(chunks), np.concatenate(lengths), np.array(owner)
    scores, similarity = [], []
    for start in range(0, len(chunks), batch_size):
        f, n = chunks[start : start + batch_size], lengths[start : start + batch_size]
        pad = batch_size - len(f)
        f = np.concatenate([f, np.zeros((pad, *f.shape[1:]), f.dtype)])
        n = np.concatenate([n, np.ones(pad, n.dtype)])
        s, sim = jax.device_get(_forward(graphdef, params, jnp.asarray(f), jnp.asarray(n)))
        scores.append(s[: len(f) - pad])
        similarity.append(sim[: len(f) - pad])
    scores, similarity = np.concatenate(scores), np.concatenate(similarity)
    videos = len(split.videos)
    result = Predictions(
        [], [], [], np.zeros((videos, len(split.classes)), np.float32), np.zeros(videos)
    )
    for v in range(videos):
        mine = np.flatnonzero(owner == v)
        score = np.concatenate([scores[i, : lengths[i]] for i in mine])
        sim = np.concatenate([similarity[i, : lengths[i]] for i in mine])  # [t, C]
        result.class_logits[v] = gamma * _top_k_mean(sim, k)
        result.video_scores[v] = _top_k_mean(score, k)
        logits = gamma * sim
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        result.scores.append(score)
        result.similarity.append(sim)
        result.class_probs.append(probs / probs.sum(axis=1, keepdims=True))
    return result


def _top_k_mean(values: np.ndarray, k: int) -> np.ndarray:
    """`[t, ...]` → the mean of the k largest along axis 0 (of all t when t < k). The host-side
    twin of `weak_losses.top_k_mean`, which is for jitted losses: called eagerly here, JAX would
    compile again for every video length (50 lengths: 11.4 s against 3.5 ms)."""
    return np.sort(values, axis=0)[::-1][:k].mean(axis=0)


def video_auc(predictions: Predictions, split: weak_input.WeakSplit) -> float:
    """ROC-AUC of the videos' anomaly scores against their labels (needs both labels): what
    the trainer chooses checkpoints with, on training videos it held out."""
    labels = [video.label for video in split.videos]
    return metrics.roc_auc_micro(predictions.video_scores, labels)


def _frame_labels(video: weak.WeakVideo, frames: int) -> np.ndarray:
    """The video's frame labels over `frames` scored frames (past its end: normal)."""
    labels = np.zeros(frames, np.int32)
    own = weak.frame_labels(video.segments, video.frames)[:frames]
    labels[: len(own)] = own
    return labels


def split_metrics(
    predictions: Predictions, split: weak_input.WeakSplit, *, snippet_frames: int
) -> dict[str, Any]:
    """The metrics of the module docstring over a test split with segments."""
    fps = snippet_frames
    labels = [
        _frame_labels(v, len(s) * fps)
        for v, s in zip(split.videos, predictions.scores, strict=True)
    ]
    index = {name: c for c, name in enumerate(split.classes)}
    predicted = predictions.class_logits.argmax(axis=1)
    true = np.array(
        [
            p if split.classes[p] in v.categories else index[(v.categories or split.classes[:1])[0]]
            for p, v in zip(predicted, split.videos, strict=True)
        ]
    )
    truth = [
        weak_metrics.Segments.of([(s, e, index[c]) for c in v.categories for s, e in v.segments])
        for v in split.videos
    ]
    found = [
        weak_metrics.segments_from_scores(p, frames_per_snippet=fps)
        for p in predictions.class_probs
    ]
    detection = weak_metrics.detection_map(found, truth, num_classes=len(split.classes))
    return {
        "frame_auc": weak_metrics.frame_auc(predictions.scores, labels, frames_per_snippet=fps),
        "frame_ap": weak_metrics.frame_ap(predictions.scores, labels, frames_per_snippet=fps),
        "category_accuracy": weak_metrics.category_accuracy(predicted, true),
        "map_per_iou": {f"{t:.1f}": m for t, m in detection.map_per_iou.items()},
        "map_average": detection.average,
    }


def load(
    config: ml_collections.ConfigDict | None, workdir: Path
) -> tuple[ml_collections.ConfigDict, weak_input.WeakData, nnx.GraphDef, nnx.State, int]:
    """The checkpoint of `workdir` (`detector.run_checkpoint`): the run's config (`config`'s
    overrides applied; None: none), its data, graphdef, parameters and step. Starts JAX's
    distributed runtime first."""
    distributed.initialize()
    checkpoints, step = detector_lib.run_checkpoint(workdir)
    try:
        where = checkpoints.directory / str(step)
        config = detector_lib.run_config(
            checkpoints.config(step), {} if config is None else config_lib.flatten(config), where
        )
        mesh = distributed.setup(config.mesh.fsdp)
        data = config_lib.weak_data(config)
        graphdef, params = detector_lib.load_params(config, checkpoints, step, mesh)
    finally:
        checkpoints.close()
    return config, data, graphdef, params, step


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """The checkpoint of `workdir` (`detector.run_checkpoint`) on the test split →
    `workdir/eval/metrics.json` (process 0), also returned."""
    started = time.perf_counter()
    workdir = Path(workdir)
    config, data, graphdef, params, step = load(config, workdir)
    split = data.split("test")
    predictions = predict(
        graphdef,
        params,
        split,
        snippets=config.data.snippets,
        batch_size=config.eval.batch_size,
    )
    result = {
        "dataset": config.data.dataset,
        "split": "test",
        "features": str(data.features),
        "workdir": str(workdir),
        "checkpoint_step": step,
        "videos": len(split.videos),
        "protocol": {
            "frames_per_snippet": data.snippet_frames,
            "frame_auc": "UCF-Crime: every test frame pooled, snippet scores repeated",
            "frame_ap": "XD-Violence: the same frames, average precision",
            "category_accuracy": "anomalous test videos; correct: argmax class in their categories",
            "map": "VadCLIP's detection mAP; normal class without ground truth (UCF-Crime)",
        },
        **split_metrics(predictions, split, snippet_frames=data.snippet_frames),
    }
    if jax.process_index() == 0:
        out = workdir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        result["timing"] = {"total_seconds": time.perf_counter() - started}
        result["config"] = json.loads(config.to_json_best_effort())
        atomic.write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
        log.info(
            "step %d: frame AUC %.4f, frame AP %.4f, category accuracy %.4f, mAP avg %.4f; %s",
            step,
            result["frame_auc"],
            result["frame_ap"],
            result["category_accuracy"],
            result["map_average"],
            out / "metrics.json",
        )
    return result
