"""Evaluation plots (PNG, matplotlib's Agg backend: no display needed).

Inputs are the scored frames of a split: `scores [M]`, `labels [M]` 0/1 (or None: unlabeled);
the per-video curves take a split's errors and scores (`jaxvad.scoring`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from jaxvad.scoring import Scores, SplitErrors

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NORMAL, ANOMALOUS, THRESHOLD = "tab:blue", "tab:red", "black"


def _spans(flags: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges [start, end) of the runs of True in `flags`."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_curve(
    path: Path,
    video: str,
    frames: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    marks: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """One video's score against its frame numbers (`frames [n]`, `scores [n]` with NaN where
    a frame has no score), ground-truth anomalous frames shaded, the threshold dashed, and
    `marks` (frame numbers, scores) as red dots."""
    fig, ax = plt.subplots(figsize=(9, 2.8))
    if labels is not None:
        for i, (start, end) in enumerate(_spans(labels == 1)):
            ax.axvspan(
                frames[start] - 0.5,
                frames[end - 1] + 0.5,
                color=ANOMALOUS,
                alpha=0.15,
                lw=0,
                label="anomalous (ground truth)" if i == 0 else None,
            )
    ax.plot(frames, scores, color=NORMAL, lw=1.2, label="score")
    ax.axhline(threshold, color=THRESHOLD, ls="--", lw=1, label=f"threshold {threshold:.3g}")
    if marks is not None and len(marks[0]):
        ax.plot(*marks, "o", color=ANOMALOUS, ms=3, label="explained anomalies")
    ax.set(xlabel="frame", ylabel="anomaly score", title=video, xlim=(frames[0], frames[-1]))
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _save(fig, path)


def score_curves(
    folder: Path,
    errors: SplitErrors,
    scores: Scores,
    threshold: float,
    *,
    marked: np.ndarray | None = None,
    file_name: str = "{video}.png",
) -> dict[str, Path]:
    """`score_curve` of every video of a split, in `folder / file_name.format(video=name)`;
    `marked`: positions `[A]` (into the split's frames) of frames to mark. Returns video name
    → path."""
    curves = {}
    for v, name in enumerate(errors.names):
        rows = errors.video == v
        marks = None
        if marked is not None:
            here = marked[errors.video[marked] == v]
            marks = (errors.frame[here], scores.score[here])
        curves[name] = score_curve(
            folder / file_name.format(video=name),
            name,
            errors.frame[rows],
            scores.score[rows],
            None if errors.label is None else errors.label[rows],
            threshold,
            marks=marks,
        )
    return curves


def roc(path: Path, scores: np.ndarray, labels: np.ndarray, auc: float) -> Path:
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, color=NORMAL, label=f"micro AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Frame-level ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def precision_recall(path: Path, scores: np.ndarray, labels: np.ndarray, ap: float) -> Path:
    precision, recall, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.step(recall, precision, where="post", color=NORMAL, label=f"AP {ap:.4f}")
    ax.axhline(labels.mean(), color="grey", ls=":", label="chance")
    ax.set(
        xlabel="recall", ylabel="precision", title="Frame-level precision-recall", ylim=(0, 1.02)
    )
    ax.legend(loc="lower left")
    return _save(fig, path)


def histogram(path: Path, scores: np.ndarray, labels: np.ndarray | None, threshold: float) -> Path:
    """Score histograms of normal and anomalous frames (all frames when unlabeled)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(scores.min(), scores.max(), 60)
    if labels is None:
        ax.hist(scores, bins=bins, color=NORMAL, alpha=0.7, label=f"all frames ({len(scores)})")
    else:
        for value, color, name in ((0, NORMAL, "normal"), (1, ANOMALOUS, "anomalous")):
            chosen = scores[labels == value]
            ax.hist(chosen, bins=bins, color=color, alpha=0.55, label=f"{name} ({len(chosen)})")
    ax.axvline(threshold, color=THRESHOLD, ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="anomaly score", ylabel="frames", title="Score distribution")
    ax.legend(fontsize=8)
    return _save(fig, path)


def deletion_curves(path: Path, curves: dict[str, dict[str, list[float]]]) -> Path:
    """Per map its mean deletion (solid) and insertion (dashed) curves: the normalised score
    against the fraction of pixels replaced (`jaxvad.explain.measure`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (name, curve) in enumerate(curves.items()):
        colour = f"C{k}"
        ax.plot(curve["fractions"], curve["deletion"], color=colour, label=f"{name} deletion")
        ax.plot(
            curve["fractions"], curve["insertion"], color=colour, ls="--", label=f"{name} insertion"
        )
    ax.set(
        xlabel="fraction of pixels replaced (most important first)",
        ylabel="normalised score",
        title="Deletion (lower is better) and insertion (higher)",
    )
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)
