"""TFDS builders that write prepared datasets as ArrayRecord: one record per video frame.

Usable as plain TFDS "manual download" builders:

    builder = Ped2(config=VadConfig.make(size=224, flow="farneback"), data_dir=OUTPUT)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=SOURCE))

and read back with `tfds.builder_from_directory(prepared_dir(OUTPUT, "ped2", config))`.
`python -m jaxvad.data_prep` is a thin command line over exactly this.

Records (features): `video` (name), `video_index` (0-based position in the split), `frame_index`
(1-based), `frame` `[S, S, C]` uint8, `flow` `[S, S, 2]` float16 (see `flow` for direction and
normalisation), `label` (0/1; 0 throughout the train split and for unlabeled videos), `mask`
`[S, S]` uint8 0/1 (zeros where the dataset has no pixel masks;
`metadata.splits[split].videos[i]` says which videos have labels (`has_labels`) and masks
(`has_pixel_mask`)). Frame and flow are stored as raw bytes (fast to write and read), masks
zlib-compressed.

Work is done in two phases. First every video is decoded, resized and its flow computed, in
parallel worker processes, each result cached as one `.npz` in `OUTPUT/<name>/<config>/cache/`
(written atomically): a re-run after an interruption skips the videos already done. Then TFDS
writes the records into its `incomplete.*` folder, which it renames to the version folder only
when every split is written; the cache is deleted after that. A failed or killed run therefore
never leaves a version folder with `dataset_info.json` behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from jaxvad.data import flow as flow_lib
from jaxvad.data import objects, preprocess, readers, synthetic
from jaxvad.data.readers import VideoSpec

VERSION = "1.0.0"
_BYTES = tfds.features.Encoding.BYTES
_ZLIB = tfds.features.Encoding.ZLIB
# Per frame, with --objects: K boxes [x0, y0, x1, y1] (original-resolution pixels), track ids
# and velocity histograms (`objects.video_objects`).
OBJECT_FEATURES = {
    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32, encoding=_BYTES),
    "tracks": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=_BYTES),
    "velocity": tfds.features.Tensor(
        shape=(None, objects.VELOCITY_BINS), dtype=np.float32, encoding=_BYTES
    ),
}


@dataclasses.dataclass(eq=False)
class VadConfig(tfds.core.BuilderConfig):
    """Preparation settings. `name` is derived from them (`make`), so each setting gets its
    own folder and several can live side by side."""

    size: int = 224
    flow: str = "farneback"
    label_version: str = "mask"  # Avenue only: "mask" or "interval".
    synthetic: str = "full"  # Synthetic only: a preset of `synthetic.PRESETS`.
    seed: int = 0  # Synthetic only.
    objects: str = "none"  # "none", "auto" (the motion detector) or "mot:DIR" (MOT files).

    @classmethod
    def make(cls, dataset: str = "ped2", **settings) -> VadConfig:
        config = cls(name="pending", **settings)
        if config.size < 16:
            raise ValueError(f"--size must be at least 16, got {config.size}")
        flow_lib.flow_function(config.flow)  # ValueError / ImportError (TV-L1's package).
        parts = [str(config.size), config.flow]
        if dataset == "avenue":
            if config.label_version not in readers.AVENUE_LABEL_VERSIONS:
                raise ValueError(f"Avenue labels: one of {readers.AVENUE_LABEL_VERSIONS}")
            parts.append(config.label_version)
        if dataset == "synthetic":
            if config.synthetic not in synthetic.PRESETS:
                raise ValueError(f"synthetic preset: one of {sorted(synthetic.PRESETS)}")
            parts += [config.synthetic, f"seed{config.seed}"]
        if config.objects != "none":
            parts.append(objects_part(config.objects))
        return dataclasses.replace(config, name="_".join(parts), version=VERSION)


def objects_part(objects_setting: str) -> str:
    """The name part of an `objects` setting: "objauto", or "objmot-" and a hash of the MOT
    folder (each folder of detections gets its own dataset), then the velocity window
    ("-vw20": `objects.VELOCITY_WINDOW` in % of the height, so velocities measured with another
    window are another dataset). ValueError for another value."""
    window = f"-vw{round(100 * objects.VELOCITY_WINDOW)}"
    if objects_setting == "auto":
        return "objauto" + window
    if objects_setting.startswith("mot:") and len(objects_setting) > 4:
        return "objmot-" + hashlib.sha1(objects_setting[4:].encode()).hexdigest()[:8] + window
    raise ValueError(f"--objects must be auto, mot:DIR or none, not {objects_setting!r}")


def _object_counts(counts: np.ndarray) -> dict[str, int]:
    """A video's object count and frames without any, from its objects per frame `[N]` (and,
    beside them in the metadata, the original height and width its boxes are in)."""
    return {"objects": int(counts.sum()), "frames_without_objects": int((counts == 0).sum())}


def objects_metadata(objects_setting: str) -> dict:
    """What metadata.json says of how the objects were found."""
    source = (
        {"source": "auto", "detector": dataclasses.asdict(objects.BoxSettings())}
        if objects_setting == "auto"
        else {"source": "mot", "folder": objects_setting[4:]}
    )
    return source | {
        "boxes": "[x0, y0, x1, y1], pixels of the original resolution, x1 and y1 exclusive",
        "tracks": "greedy IoU matching to the previous frame, IoU >= 0.3",
        "velocity": (
            f"{objects.VELOCITY_BINS}-bin magnitude-weighted histogram of flow orientation over "
            "the object's foreground pixels (MOG2) in its fastest window of "
            f"{objects.VELOCITY_WINDOW:g} × the frame height, px/frame, DIS flow (preset "
            "medium) at the original resolution; a row sums to their mean speed"
        ),
    }


class VadBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: subclasses name the dataset, its channel count and its reader."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS: ClassVar[list[VadConfig]] = [VadConfig.make()]
    CHANNELS: ClassVar[int] = 1
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point manual_dir at the unpacked archive; see data_prep/."

    def __init__(
        self, *, config: VadConfig | str | None = None, workers: int | None = None, **kwargs
    ):
        if isinstance(config, VadConfig):
            # TFDS refuses a custom config named like a predefined one; names are derived from
            # the settings, so the same name means the same settings: use the predefined one.
            config = next((c for c in self.BUILDER_CONFIGS if c.name == config.name), config)
        super().__init__(config=config, **kwargs)
        self._workers = workers or os.cpu_count() or 1

    def list_videos(self, source: Path) -> dict[str, list[VideoSpec]]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.size
        features = tfds.features.FeaturesDict(
            {
                "video": tfds.features.Text(),
                "video_index": np.int32,
                "frame_index": np.int32,
                "frame": tfds.features.Tensor(
                    shape=(s, s, self.CHANNELS), dtype=np.uint8, encoding=_BYTES
                ),
                "flow": tfds.features.Tensor(shape=(s, s, 2), dtype=np.float16, encoding=_BYTES),
                "label": np.int32,
                "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding=_ZLIB),
            }
            | (OBJECT_FEATURES if self.builder_config.objects != "none" else {})
        )
        # Records are written in generation order (video, frame): skipping TFDS's shuffle pass
        # saves a full re-read of the data. Readers still index frames by their fields.
        return tfds.core.DatasetInfo(
            builder=self,
            features=features,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        source = Path(dl_manager.manual_dir)
        specs = self.list_videos(source)
        cache = self._cache_dir()
        cached = self._prepare_all(specs, cache)
        self.info.metadata.update(self._metadata(source, specs, cached))
        return {split: self._generate_examples(videos, cached) for split, videos in specs.items()}

    def _generate_examples(self, videos: list[VideoSpec], cached: dict) -> Iterator:
        for index, spec in enumerate(videos):
            video = preprocess.load(cached[spec.split, spec.name])
            with_objects = self.builder_config.objects != "none"
            for i in range(len(video.frames)):
                yield (
                    f"{spec.name}_{i + 1:06d}",
                    {
                        "video": spec.name,
                        "video_index": index,
                        "frame_index": i + 1,
                        "frame": video.frames[i],
                        "flow": video.flow[i],
                        "label": int(video.labels[i]),
                        "mask": video.masks[i],
                    }
                    | (video.frame_objects(i) if with_objects else {}),
                )

    def _cache_dir(self) -> Path:
        # data_dir is `<root>/<name>/<config>/<version>` (or TFDS's incomplete sibling of it).
        cache = Path(self.data_dir).parent / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        return cache

    def _prepare_all(self, specs: dict[str, list[VideoSpec]], cache: Path) -> dict:
        """Prepares every video into the cache, in parallel; returns {(split, name): path}."""
        config = self.builder_config
        jobs = [
            (spec, cache / f"{spec.split}-{spec.name}.npz")
            for videos in specs.values()
            for spec in videos
        ]
        work = functools.partial(
            preprocess.prepare_to_cache,
            size=config.size,
            channels=self.CHANNELS,
            flow_method=config.flow,
            objects=config.objects,
        )
        done = {}
        with contextlib.ExitStack() as stack:
            mapper = map
            if self._workers > 1 and len(jobs) > 1:
                context = multiprocessing.get_context("spawn")  # No fork of TFDS's threads.
                pool = stack.enter_context(context.Pool(min(self._workers, len(jobs))))
                mapper = pool.imap_unordered
            bar = stack.enter_context(
                tqdm(total=len(jobs), unit="video", desc=f"{self.name}: decode+resize+flow")
            )
            for split, name, path in mapper(work, jobs):
                done[split, name] = path
                bar.update()
        return done

    def _metadata(self, source: Path, specs: dict[str, list[VideoSpec]], cached: dict) -> dict:
        config = self.builder_config
        splits = {}
        moments = np.zeros((2, 2))
        for split, videos in specs.items():
            entries = []
            for spec in videos:
                with np.load(cached[split, spec.name]) as data:  # Reads only these members.
                    labels, has_masks = data["labels"], bool(data["has_masks"])
                    has_labels = bool(data["has_labels"])
                    if split == "train":
                        moments += data["flow_moments"]
                    counts, (height, width) = data["object_counts"], data["frame_size"]
                entries.append(
                    {
                        "name": spec.name,
                        "frames": len(labels),
                        "anomalous_frames": int(labels.sum()),
                        "has_labels": has_labels,
                        "has_pixel_mask": has_masks,
                    }
                    | (
                        _object_counts(counts) | {"height": int(height), "width": int(width)}
                        if config.objects != "none"
                        else {}
                    )
                )
            splits[split] = {
                "videos": entries,
                "num_videos": len(entries),
                "num_frames": sum(e["frames"] for e in entries),
                "num_anomalous_frames": sum(e["anomalous_frames"] for e in entries),
            }
        pixels = max(splits["train"]["num_frames"] * config.size**2, 1)
        mean = moments[0] / pixels
        std = np.sqrt(np.maximum(moments[1] / pixels - mean**2, 0))
        return {
            "dataset": self.name,
            "source": str(source),
            "size": config.size,
            "channels": self.CHANNELS,
            "label_version": config.label_version if self.name == "avenue" else "official",
            "flow": {
                **flow_lib.flow_metadata(config.flow, config.size),
                "train_mean": mean.tolist(),
                "train_std": std.tolist(),
            },
            "splits": splits,
        } | ({"objects": objects_metadata(config.objects)} if config.objects != "none" else {})

    def finish(self) -> None:
        """Deletes the per-video cache once the dataset is complete."""
        if is_complete(Path(self.data_dir)):
            shutil.rmtree(Path(self.data_dir).parent / "cache", ignore_errors=True)


class Ped2(VadBuilder):
    """UCSD Ped2, official or repackaged layout (grayscale)."""

    name = "ped2"

    def list_videos(self, source: Path) -> dict[str, list[VideoSpec]]:
        return readers.ped2_videos(source)


class Avenue(VadBuilder):
    """CUHK Avenue (colour); frame-label version from the config."""

    name = "avenue"
    CHANNELS = 3
    BUILDER_CONFIGS: ClassVar[list[VadConfig]] = [VadConfig.make("avenue")]

    def list_videos(self, source: Path) -> dict[str, list[VideoSpec]]:
        return readers.avenue_videos(source, self.builder_config.label_version)


class ShanghaiTech(VadBuilder):
    """ShanghaiTech Campus (colour)."""

    name = "shanghaitech"
    CHANNELS = 3

    def list_videos(self, source: Path) -> dict[str, list[VideoSpec]]:
        return readers.shanghaitech_videos(source)


class Synthetic(VadBuilder):
    """The embedded synthetic Ped2-like dataset. Its `manual_dir` holds the official-layout
    source that `write_source` generates (`prepare` does it before building)."""

    name = "synthetic"
    BUILDER_CONFIGS: ClassVar[list[VadConfig]] = [VadConfig.make("synthetic")]

    def write_source(self, source: Path) -> None:
        """Generates the source once, deterministically from the config's preset and seed."""
        config = self.builder_config
        spec = dataclasses.replace(synthetic.PRESETS[config.synthetic], seed=config.seed)
        synthetic.write_ped2_layout(source, spec)

    def list_videos(self, source: Path) -> dict[str, list[VideoSpec]]:
        return readers.ped2_videos(source)


BUILDERS: dict[str, type[VadBuilder]] = {
    "ped2": Ped2,
    "avenue": Avenue,
    "shanghaitech": ShanghaiTech,
    "synthetic": Synthetic,
}


def is_complete(dataset_dir: Path) -> bool:
    """Whether a version folder holds a finished dataset (TFDS writes `dataset_info.json`
    last, when it renames its `incomplete.*` folder)."""
    return (dataset_dir / "dataset_info.json").is_file()


def read_metadata(dataset_dir: Path) -> dict:
    """The metadata a prepared dataset was written with (see `VadBuilder._metadata`)."""
    return json.loads((Path(dataset_dir) / "metadata.json").read_text())


def split_has_labels(metadata: dict, split: str) -> bool:
    """Whether every video of `split` has frame labels (datasets prepared before the
    `has_labels` field existed always had them)."""
    return all(v.get("has_labels", True) for v in metadata["splits"][split]["videos"])


def prepared_dir(output: str | Path, dataset: str, config: VadConfig) -> Path:
    """Where `data_prep` writes a dataset: `OUTPUT/<dataset>/<config name>/<version>`."""
    return Path(output) / dataset / config.name / VERSION


def synthetic_source(output: str | Path, config: VadConfig) -> Path:
    """Where the synthetic dataset's official-layout source is generated."""
    return Path(output) / "synthetic" / "source" / f"{config.synthetic}_seed{config.seed}"


def prepare_command(dataset: str, config: VadConfig, output: str | Path, source: str) -> str:
    """The `jaxvad.data_prep` command line that prepares exactly this dataset and config."""
    command = f"python -m jaxvad.data_prep --dataset={dataset}"
    if dataset != "synthetic":
        command += f" --source={source or '/path/to/' + dataset}"
    command += f" --output={output} --size={config.size} --flow={config.flow}"
    if dataset == "avenue":
        command += f" --label_version={config.label_version}"
    if dataset == "synthetic":
        command += f" --synthetic={config.synthetic} --seed={config.seed}"
    if config.objects != "none":
        command += f" --objects={config.objects}"
    return command


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset is not prepared where the config says (`config.data.root`)."""


def dataset_dir(
    root: str | Path, dataset: str, config: VadConfig, *, source: str = "", needed_for: str = ""
) -> Path:
    """The prepared `dataset` of `config` under `root`; DatasetNotPreparedError, with the
    `jaxvad.data_prep` command that prepares it (`source`: the official archive, if known),
    when it is not there. `needed_for`: what the error says the dataset is needed for."""
    path = prepared_dir(root, dataset, config)
    if is_complete(path):
        return path
    why = f", needed for {needed_for}" if needed_for else ""
    raise DatasetNotPreparedError(
        f"{path}: the {dataset} dataset is not prepared (config.data.root={str(root)!r}{why}); "
        f"prepare it with: {prepare_command(dataset, config, root, source)}"
    )


def prepare(
    dataset: str,
    config: VadConfig,
    *,
    output: str | Path,
    source: str | Path,
    workers: int | None = None,
) -> Path:
    """Builds (or finds complete) one prepared dataset; returns its directory."""
    builder = BUILDERS[dataset](config=config, data_dir=str(output), workers=workers)
    complete = is_complete(Path(builder.data_dir))
    if isinstance(builder, Synthetic) and not complete:
        builder.write_source(Path(source))  # TFDS refuses a missing manual_dir.
    downloads = Path(output) / dataset / config.name / "downloads"  # TFDS wants one; unused.
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_dir=str(downloads),
            download_config=tfds.download.DownloadConfig(manual_dir=str(source)),
        )
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    builder.finish()
    return Path(builder.data_dir)
