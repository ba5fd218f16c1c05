"""Per-video descriptions of a weakly supervised model's findings (AADC-Net's last step).

The paper has LLaMA write the description from the detector's outputs. jaxvad ships no
language model, so the default `template` writes it from the same facts; `language_model`
keeps the interface open: any local model behind a `generate(prompt) -> text` function
describes the video from `prompt(facts)`, the facts as JSON under a fixed instruction.

`VideoFacts` holds what a description may say: the verdict, each anomalous segment's category
with its text similarity, its start and end (frames, and seconds when the frame rate is
known), its peak and the BLIP caption of its peak frame.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class SegmentFacts:
    """One anomalous segment: frames [start, end), its category (the anomaly class whose text
    is most similar to its snippets) with that mean cosine similarity, its peak frame and
    score, and the peak frame's caption (None: no captioner)."""

    start: int
    end: int
    category: str
    similarity: float
    peak_frame: int
    peak_score: float
    caption: str | None = None

    def record(self, fps: float) -> dict:
        """JSON-ready fields, times also in seconds (None when `fps` is 0: unknown)."""
        seconds = (lambda f: round(f / fps, 3)) if fps else (lambda f: None)
        return dataclasses.asdict(self) | {
            "similarity": round(self.similarity, 4),
            "peak_score": round(self.peak_score, 4),
            "start_s": seconds(self.start),
            "end_s": seconds(self.end),
            "peak_s": seconds(self.peak_frame),
        }


@dataclasses.dataclass(frozen=True)
class VideoFacts:
    """One video: its name, the frame rate (0: unknown, times in frames only), its highest
    snippet score, the alarm threshold and its anomalous segments in time order (none:
    normal)."""

    video: str
    fps: float
    peak_score: float
    threshold: float
    segments: tuple[SegmentFacts, ...]

    @property
    def abnormal(self) -> bool:
        return bool(self.segments)

    def record(self) -> dict:
        """The facts as JSON-ready fields, times in seconds (None without a frame rate)."""
        return {
            "video": self.video,
            "verdict": "abnormal" if self.abnormal else "normal",
            "peak_score": round(self.peak_score, 4),
            "threshold": self.threshold,
            "fps": self.fps or None,
            "segments": [s.record(self.fps) for s in self.segments],
        }


class Describer(Protocol):
    """Writes one video's description from its facts."""

    def __call__(self, facts: VideoFacts) -> str: ...


def _when(frame: int, fps: float) -> str:
    return f"{frame / fps:.2f} s" if fps else f"frame {frame}"


def _span(segment: SegmentFacts, fps: float) -> str:
    frames = f"frames {segment.start}–{segment.end - 1}"
    return f"{segment.start / fps:.2f}–{segment.end / fps:.2f} s ({frames})" if fps else frames


def template(facts: VideoFacts) -> str:
    """The default description: one sentence for the verdict, one per segment."""
    if not facts.abnormal:
        return (
            f"{facts.video}: normal (highest snippet score {facts.peak_score:.2f}, "
            f"below the alarm threshold {facts.threshold:.2f})."
        )
    count = len(facts.segments)
    lines = [f"{facts.video}: abnormal, {count} anomalous segment{'s' * (count != 1)}."]
    for s in facts.segments:
        what = s.category.replace("_", " ")
        line = (
            f"{_span(s, facts.fps)}: {what} (text similarity {s.similarity:.2f}), "
            f"peak score {s.peak_score:.2f} at {_when(s.peak_frame, facts.fps)}"
        )
        lines.append(line + (f'; the peak frame shows "{s.caption}".' if s.caption else "."))
    return " ".join(lines)


INSTRUCTION = (
    "You describe surveillance videos for an operator. From the detector's findings below "
    "(JSON), write two or three plain sentences: whether the video is normal or abnormal, and "
    "for each anomalous segment its category, when it starts and ends, and what its peak frame "
    "shows. Use only these facts."
)


def prompt(facts: VideoFacts) -> str:
    """What a language model is given: `INSTRUCTION`, then the facts as JSON."""
    return f"{INSTRUCTION}\n\n{json.dumps(facts.record(), ensure_ascii=False)}\n"


def language_model(generate: Callable[[str], str]) -> Describer:
    """A describer backed by a local language model: `generate(prompt(facts))`, stripped."""
    return lambda facts: generate(prompt(facts)).strip()
