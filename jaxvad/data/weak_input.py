"""Input of weakly supervised training and evaluation (the `aadc` model): snippet features of
whole videos with video labels, batched at one fixed length.

Features are VadCLIP's layout (`weak.read_features`): a folder with `<video>__<k>.npy`
`[snippets, D]` per video and crop k, and the list files `train.csv` / `test.csv`. The weakly
labelled synthetic set (`weak.synthetic_weak_videos`, preset `config.data.synthetic` of
`weak.SYNTHETIC_PRESETS`) is the embedded default: its features are computed when missing
(`write_synthetic_features`, the same files as `python -m jaxvad.features`) with the CLIP of
`config.model.clip`, itself a tiny random CLIP written under `config.data.root` when that
field is empty (`vlm.clip.random_folder`).

A real dataset (`ucf_crime`, `xd_violence`, `shanghaitech`) reads, from the folder
`config.data.features`:
- `train.csv` and `test.csv`: the split lists, VadCLIP's `path,label` CSV or a plain list (as
  `python -m jaxvad.features` writes them; published lists renamed to these, e.g. VadCLIP's
  `ucf_CLIP_rgb.csv` / `ucf_CLIP_rgbtest.csv`); each listed `.npy` is found by its file name
  anywhere under the folder (published lists hold their authors' paths). Labels and
  categories come from the names (`weak.read_ucf_crime`, `read_xd_violence`,
  `read_shanghaitech_weak`), not from the label column;
- the test frame labels, from `config.data.source` (the folder holding them; empty: the
  features folder): UCF-Crime `Temporal_Anomaly_Annotation_for_Testing_Videos.txt`,
  XD-Violence `annotations.txt`, ShanghaiTech the official `test_frame_mask/<clip>.npy`.
A test video's frame count is its snippets × `config.data.snippet_frames` (VadCLIP's ground
truth), or its frame mask's length (ShanghaiTech).

Training samples are (video, crop) pairs. A sample's features `[t, D]` become `[S, D]`, S =
`config.data.snippets`, as VadCLIP's `process_feat`: a longer video is cut into S equal
stretches of snippets (`np.linspace(0, t, S + 1)` bounds) and each stretch averaged; a shorter
one is zero-padded, `length` = t. Test videos keep every snippet: `test_chunks` cuts them into
S-long chunks (the last one padded), as VadCLIP's test loop does.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from jaxvad import atomic
from jaxvad.data import pipeline, weak
from jaxvad.data.video_io import DataError

log = logging.getLogger("jaxvad.data.weak_input")

# The weakly labelled datasets and their class lists (index 0: the normal class).
CLASSES = {
    "synthetic_weak": weak.SYNTHETIC_CATEGORIES,
    "ucf_crime": weak.UCF_CRIME_CATEGORIES,
    "xd_violence": weak.XD_VIOLENCE_CATEGORIES,
    "shanghaitech": weak.SHANGHAITECH_CATEGORIES,
}
TINY_CLIP = "clip_tiny_random"  # The random CLIP's folder under config.data.root.


def prompt_text(name: str) -> str:
    """A class name as text for CLIP's tokenizer: `against_the_flow` → `against the flow`,
    `RoadAccidents` → `road accidents`."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


def clip_folder(clip: str, root: str | Path) -> Path:
    """`config.model.clip`, or the tiny random CLIP under `config.data.root` when empty."""
    return Path(clip) if clip else Path(root) / TINY_CLIP


def features_folder(
    features: str, root: str | Path, preset: str, seed: int, clip: str, snippet: int, objects: str
) -> Path:
    """`config.data.features`, or, when empty, the synthetic set's features under the data
    root, named by what they depend on (preset, seed, CLIP folder, frames per snippet, object
    fusion)."""
    if features:
        return Path(features)
    source = Path(clip).name if clip else TINY_CLIP
    fusion = "" if objects == "none" else "_" + re.sub(r"[^\w.-]+", "-", objects)
    return Path(root) / f"synthetic_weak_{preset}_seed{seed}_{source}_s{snippet}{fusion}"


def feature_width(clip: str | Path, objects: str) -> int:
    """The snippet features' width D: the CLIP's projection width E, 2E with object fusion
    (`objects` other than "none", `jaxvad.data.clip_features`)."""
    from jaxvad.vlm.clip import read_config

    return read_config(clip).projection_dim * (1 if objects == "none" else 2)


# ----------------------------------------------------------------------------- synthetic


def write_synthetic_features(
    clip_dir: Path, output: Path, spec: weak.WeakSyntheticSpec, snippet: int, objects: str
) -> None:
    """Writes the features of both splits of the synthetic set `spec` into the folder `output`
    (atomically: complete or absent), exactly as `python -m jaxvad.features
    --dataset=synthetic_weak --synthetic=PRESET --synthetic-seed=SEED --clip=CLIP_DIR
    --snippet=SNIPPET --objects=OBJECTS` writes them (`clip_features.extract`, one crop)."""
    from jaxvad.data import clip_features
    from jaxvad.vlm.clip import Clip  # transformers loads only here.

    clip = Clip.load(clip_dir)
    width = clip.config.projection_dim * (1 if objects == "none" else 2)
    settings = clip_features.Settings(
        "synthetic_weak", str(clip_dir.resolve()), snippet, 1, objects, width
    )
    with atomic.folder(output) as staging:
        clip_features.extract(
            clip, clip_features.synthetic_videos(spec), staging, settings, batch=64
        )


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class WeakSplit:
    """One split's videos: `videos` (labels, categories, test segments and frame counts),
    their `features` (files, crops, snippets, width), `classes` (index 0 normal)."""

    videos: tuple[weak.WeakVideo, ...]
    features: tuple[weak.VideoFeatures, ...]
    classes: tuple[str, ...]

    def categories(self) -> np.ndarray:
        """`[V, C]` float32 multi-hot classes of each video (normal videos: class 0)."""
        index = {name: c for c, name in enumerate(self.classes)}
        out = np.zeros((len(self.videos), len(self.classes)), np.float32)
        for v, video in enumerate(self.videos):
            out[v, [index[c] for c in video.categories] or [0]] = 1.0
        return out

    def samples(self) -> np.ndarray:
        """`[N, 2]` int (video, crop) of every training sample."""
        return np.array([(v, k) for v, f in enumerate(self.features) for k in range(f.crops)])

    def take(self, videos: Sequence[int]) -> WeakSplit:
        """The split of the `videos` (indices), in that order."""
        return dataclasses.replace(
            self,
            videos=tuple(self.videos[v] for v in videos),
            features=tuple(self.features[v] for v in videos),
        )


def weak_split(
    videos: Sequence[weak.WeakVideo],
    features: dict[str, weak.VideoFeatures],
    classes: Sequence[str],
) -> WeakSplit:
    """The videos of a split matched with their features by name (DataError when one lacks
    features or names an unknown class)."""
    missing = [v.name for v in videos if v.name not in features]
    if missing:
        raise DataError(missing[0], f"no features for {len(missing)} videos of the split")
    unknown = {c for v in videos for c in v.categories} - set(classes)
    if unknown:
        raise DataError(videos[0].name, f"categories {sorted(unknown)} not in {classes}")
    return WeakSplit(tuple(videos), tuple(features[v.name] for v in videos), tuple(classes))


def synthetic_split(
    folder: Path, spec: weak.WeakSyntheticSpec, split: str, width: int
) -> WeakSplit:
    """The synthetic set's `split` with the features of `folder` (`write_synthetic_features`)."""
    videos = [video for video, _ in weak.synthetic_weak_videos(spec, split)]
    features = weak.read_features(folder / f"{split}.csv", width=width)
    return weak_split(videos, features, CLASSES["synthetic_weak"])


# Per real dataset: its list reader, and its test labels' file or folder (module docstring).
REAL_READERS = {
    "ucf_crime": weak.read_ucf_crime,
    "xd_violence": weak.read_xd_violence,
    "shanghaitech": weak.read_shanghaitech_weak,
}
TEST_LABELS = {
    "ucf_crime": "Temporal_Anomaly_Annotation_for_Testing_Videos.txt",
    "xd_violence": "annotations.txt",
    "shanghaitech": "test_frame_mask",
}


def real_split(
    dataset: str, folder: Path, labels: Path, split: str, *, width: int, snippet_frames: int
) -> WeakSplit:
    """The `split` of a real dataset: `folder/<split>.csv` read by the dataset's reader (test:
    with the labels under `labels`), its features found under `folder` (module docstring). A
    missing list, annotation or feature file is a `weak.WeakLabelError`."""
    list_file = folder / f"{split}.csv"
    if not list_file.is_file():
        raise weak.WeakLabelError(
            list_file, None, f"{split} list not found (VadCLIP's path,label CSV)"
        )
    annotations = None
    if split == "test":
        annotations = labels / TEST_LABELS[dataset]
        if not annotations.exists():
            raise weak.WeakLabelError(
                annotations, None, "test labels not found (config.data.source: their folder)"
            )
    videos = REAL_READERS[dataset](list_file, annotations)
    features = weak.read_features(list_file, folder, width=width)
    if split == "test":  # VadCLIP's ground truth: snippet_frames frames per snippet.
        videos = [
            v
            if v.frames
            else dataclasses.replace(v, frames=features[v.name].snippets * snippet_frames)
            for v in videos
        ]
    return weak_split(videos, features, CLASSES[dataset])


@dataclasses.dataclass(frozen=True)
class WeakData:
    """Where a weakly labelled dataset's features and CLIP are, and how they are batched.

    `features`: the VadCLIP-layout folder; `clip`: the CLIP folder (text tower and tokenizer;
    for the synthetic set also the image tower its features come from); `random_clip`: `clip`
    is the tiny random CLIP, written when missing; `spec`: the synthetic set's (None for a
    real dataset); `snippets`: the training length S; `snippet_frames`: frames per snippet;
    `objects`: the features' object fusion ("none", "auto", "mot:DIR"; `jaxvad.data.
    clip_features`): their width is the CLIP's projection width E, 2E with objects; `labels`:
    the folder of a real dataset's test labels (module docstring)."""

    dataset: str
    features: Path
    clip: Path
    random_clip: bool
    spec: weak.WeakSyntheticSpec | None
    snippets: int
    snippet_frames: int
    objects: str = "none"
    labels: Path | None = None

    def ensure(self, seed: int = 0) -> None:
        """Writes what the synthetic set lacks (the random CLIP, the features); a real
        dataset's missing features are a DataError naming the command that computes them."""
        if self.random_clip and not (self.clip / "config.json").is_file():
            from jaxvad.vlm.clip.random_folder import write_random_clip

            log.info("writing a tiny random CLIP to %s", self.clip)
            with atomic.folder(self.clip) as staging:
                write_random_clip(staging, seed=seed)
        if (self.features / "train.csv").is_file():
            return
        if self.spec is None:
            raise DataError(
                self.features,
                "no train.csv: compute the features with python -m jaxvad.features "
                f"--clip={self.clip} --dataset={self.dataset} --source=DIR "
                f"--output={self.features}",
            )
        log.info("synthetic_weak: computing CLIP features into %s", self.features)
        write_synthetic_features(
            self.clip, self.features, self.spec, self.snippet_frames, self.objects
        )

    def width(self) -> int:
        """The features' width D: the CLIP's projection width E, 2E with object fusion."""
        return feature_width(self.clip, self.objects)

    def split(self, name: str) -> WeakSplit:
        """The split `name` ("train", "test") with features of `width()`."""
        if self.spec is not None:
            return synthetic_split(self.features, self.spec, name, self.width())
        return real_split(
            self.dataset,
            self.features,
            self.labels or self.features,
            name,
            width=self.width(),
            snippet_frames=self.snippet_frames,
        )


# ----------------------------------------------------------------------------- batches


def fixed_length(features: np.ndarray, snippets: int) -> tuple[np.ndarray, int]:
    """`[t, D]` → (`[snippets, D]` float32, valid length): VadCLIP's `process_feat` (module
    docstring): uniform averaging of longer videos, zero padding of shorter ones."""
    t = len(features)
    if t > snippets:
        bounds = np.linspace(0, t, snippets + 1).astype(np.int64)
        out = np.stack(
            [features[a:b].mean(0) if b > a else features[a] for a, b in itertools.pairwise(bounds)]
        )
        return out.astype(np.float32), snippets
    out = np.zeros((snippets, features.shape[1]), np.float32)
    out[:t] = features
    return out, t


@functools.lru_cache(maxsize=4096)
def _load(files: tuple[Path, ...]) -> np.ndarray:
    return weak.VideoFeatures("", files, 0, 0, 0).load()


@dataclasses.dataclass(frozen=True, eq=False)
class _WeakBatch:
    """Sample ids `[B]` → a training batch (see `train_dataset`)."""

    split: WeakSplit
    samples: np.ndarray
    categories: np.ndarray
    snippets: int

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        features, length = zip(
            *(
                fixed_length(_load(self.split.features[v].files)[k], self.snippets)
                for v, k in self.samples[ids]
            ),
            strict=True,
        )
        video = self.samples[ids, 0]
        return {
            "features": np.stack(features),
            "length": np.asarray(length, np.int32),
            "label": np.asarray([self.split.videos[v].label for v in video], np.int32),
            "categories": self.categories[video],
        }


def steps_per_epoch(split: WeakSplit, *, batch_size: int, shard_count: int) -> int:
    """Batches per epoch of each shard of `train_dataset`."""
    return len(split.samples()) // shard_count // batch_size


def train_dataset(
    split: WeakSplit,
    *,
    snippets: int,
    batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.IterDataset:
    """Shuffled training batches of this process, forever: `features` `[B, S, D]` float32
    (`fixed_length`), `length` `[B]` int32, `label` `[B]` int32 (1: anomalous video),
    `categories` `[B, C]` float32 multi-hot classes. Order, sharding and iterator state as
    `pipeline.train_dataset`'s (one permutation of the N samples per epoch from (seed, epoch),
    process `shard_index` takes every `shard_count`-th, `drop_remainder`)."""
    shard_index, shard_count = pipeline._process_shard(shard_index, shard_count)
    samples = split.samples()
    per_epoch = len(samples) - len(samples) % shard_count
    if per_epoch // shard_count < batch_size:
        raise ValueError(
            f"{len(samples)} training samples give fewer than one batch of {batch_size} per "
            f"shard ({shard_count} shards)"
        )
    ds = grain.MapDataset.range(len(samples)).shuffle(seed=pipeline._shuffle_seed(seed))
    ds = ds[:per_epoch][shard_index::shard_count]
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
    ds = ds.repeat(None).map(_WeakBatch(split, samples, split.categories(), snippets))
    return ds.to_iter_dataset(pipeline._read_options(0))


def test_chunks(features: np.ndarray, snippets: int) -> tuple[np.ndarray, np.ndarray]:
    """A test video's `[t, D]` → chunks `[ceil(t / S), S, D]` (the last zero-padded) and their
    lengths `[ceil(t / S)]` int32."""
    t, width = features.shape
    count = -(-t // snippets)
    padded = np.zeros((count * snippets, width), np.float32)
    padded[:t] = features
    lengths = np.minimum(snippets, t - snippets * np.arange(count)).astype(np.int32)
    return padded.reshape(count, snippets, width), lengths
