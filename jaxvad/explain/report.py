"""report.html: one page per explanation run, rendered with jinja2 (autoescaped: a video named
`<script>…` is shown as text), images by relative, URL-quoted paths, no scripts and nothing
fetched from the network, so the folder can be copied anywhere and opened offline."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE = "report.html.j2"
WEAK_TEMPLATE = "weak_report.html.j2"  # A weakly supervised model's alarms.

# What each image of an anomaly shows, in the order of the page.
IMAGE_TITLES = {
    "frame": "frame",
    "predicted": "the model's frame (predicted or reconstructed)",
    "error_rgb": "appearance map m_rgb",
    "error_flow": "motion map m_flow",
    "anomaly_map": "anomaly map (normalised, blurred)",
    "anomaly_foreground": "anomaly map × foreground (|frame − training background|)",
    "gradcam": "Grad-CAM (motion features)",
    "hirescam": "HiResCAM (motion features)",
    "overlay": 'overlay of the "where" map',
    "crop": "captioned crop",
    "object_crop": "captioned object (its box in the original frame)",
}
CAPTIONED = ("crop", "object_crop")  # Shown last.
OBJECT_TITLES = {  # Object mode's pictures, after the model's extra maps.
    "objects": "objects (the top one in red)",
    "gradcam_in_box": "Grad-CAM inside the top object's box",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jaxvad.explain", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["url"] = lambda path: urllib.parse.quote(str(path))
    env.filters["num"] = lambda x, digits=3: "–" if x is None else f"{x:.{digits}f}"
    return env


def render(
    *,
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    curves: Mapping[str, str],
    extra_titles: Mapping[str, str],
    quality: Mapping[str, Any] | None = None,
    deletion: str | None = None,
) -> str:
    """The page: the summary, with `quality` (`measure.measure`) its table and the deletion
    curves' picture (relative path `deletion`), each video's score curve (relative path in
    `curves`), then the video's records in frame order, with the model's extra maps
    (`extra_titles`: name → title) after the overlay."""
    by_video = {name: [r for r in records if r["video"] == name] for name in curves}
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            summary=summary,
            quality=quality,
            deletion=deletion,
            curves=curves,
            by_video=by_video,
            titles={k: v for k, v in IMAGE_TITLES.items() if k not in CAPTIONED}
            | dict(extra_titles)
            | {k: IMAGE_TITLES[k] for k in CAPTIONED},
        )
    )


def write(path: Path, **context: Any) -> Path:
    """Renders the page (`render`'s keyword arguments) into `path`."""
    path.write_text(render(**context), encoding="utf-8")
    return path


def write_weak(
    path: Path,
    *,
    summary: Mapping[str, Any],
    videos: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    curves: Mapping[str, str],
) -> Path:
    """A weakly supervised model's page into `path`: the summary, then per video its
    description, score curve (relative path in `curves`) and alarms (`jaxvad.explain.
    weak_alarms`)."""
    by_video = {v["video"]: [r for r in records if r["video"] == v["video"]] for v in videos}
    page = (
        _environment()
        .get_template(WEAK_TEMPLATE)
        .render(summary=summary, videos=videos, by_video=by_video, curves=curves)
    )
    path.write_text(page, encoding="utf-8")
    return path
