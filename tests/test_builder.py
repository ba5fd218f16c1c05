"""Preparation of the real UCSD Ped2 (../shared/data/ped2) and the builder used as plain TFDS."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvad import data_prep
from jaxvad.data import builder, pipeline, readers, synthetic
from jaxvad.data.video_io import frame_number

PED2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ped2"
SIZE = 32

needs_ped2 = pytest.mark.skipif(
    not (PED2 / "Test" / "UCSDped2.m").is_file(), reason=f"real Ped2 not found at {PED2}"
)


@pytest.fixture(scope="module")
def ped2_prepared(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("ped2")
    argv = ["--dataset=ped2", f"--source={PED2}", f"--output={out}", f"--size={SIZE}"]
    return out, argv


@needs_ped2
@pytest.mark.slow
def test_real_ped2_counts_labels_and_masks(ped2_prepared, capsys):
    out, argv = ped2_prepared
    assert data_prep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "train       16    2,550                 0" in printed
    assert "test        12    2,010             1,648" in printed

    dataset_dir = out / "ped2" / f"{SIZE}_farneback" / "1.0.0"
    assert not (dataset_dir.parent / "cache").exists()  # Removed once the dataset is complete.
    tfds_builder = tfds.builder_from_directory(str(dataset_dir))
    assert tfds_builder.info.splits["train"].num_examples == 2550
    assert tfds_builder.info.splits["test"].num_examples == 2010
    metadata = tfds_builder.info.metadata
    assert metadata["flow"]["method"] == "farneback"
    assert metadata["flow"]["scale_pixels"] == pytest.approx(0.02 * SIZE)

    # Frame labels equal the official `.m`, and the concatenated label file of the field.
    table = pipeline.open_prepared(dataset_dir, "test")
    ranges = readers.read_ucsd_m(PED2 / "Test" / "UCSDped2.m")
    labels = []
    for v in range(table.num_videos):
        ids = table.video_records(v)
        got = np.array([table.source[int(i)]["label"] for i in ids])
        expected = readers.RangeLabels(Path("m"), tuple(ranges[v])).load(len(ids), f"v{v}")
        np.testing.assert_array_equal(got, expected)
        labels.append(got)
    concatenated = PED2.parent / "labels" / "concatenated" / "frame_labels_ped2.npy"
    if concatenated.is_file():
        np.testing.assert_array_equal(np.concatenate(labels), np.load(concatenated).ravel())

    # Every stored mask is the resized official mask of the same frame number, including the
    # clips whose masks are named `frameNNN.png`.
    names = [v["name"] for v in metadata["splits"]["test"]["videos"]]
    for clip in ("Test001", "Test006", "Test009", "Test012"):
        v = names.index(clip)
        ids = table.video_records(v)
        mask_files = sorted((PED2 / "Test" / f"{clip}_gt").glob("*.png"), key=frame_number)
        assert len(mask_files) == len(ids)
        for k in (0, len(ids) // 2, len(ids) - 1):
            official = cv2.imread(str(mask_files[k]), cv2.IMREAD_GRAYSCALE) > 0
            resized = cv2.resize(
                official.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST
            )
            record = table.source[int(ids[k])]
            assert record["frame_index"] == k + 1 == frame_number(mask_files[k])
            np.testing.assert_array_equal(record["mask"], resized)

    # Re-running finds the dataset complete and prints the same summary without recomputing.
    assert data_prep.main(argv) == 0
    assert "test        12    2,010             1,648" in capsys.readouterr().out


@needs_ped2
def test_official_sample_prepares(tmp_path, capsys):
    """The untouched official `.tif`/`.bmp` sample (Train001, Test001) through data_prep."""
    argv = [
        "--dataset=ped2",
        f"--source={PED2 / 'official_sample'}",
        f"--output={tmp_path}",
        f"--size={SIZE}",
        "--workers=1",
    ]
    assert data_prep.main(argv) == 0
    counts = data_prep.summary(tmp_path / "ped2" / f"{SIZE}_farneback" / "1.0.0")
    assert counts["train"] == {"num_videos": 1, "num_frames": 120, "num_anomalous_frames": 0}
    assert counts["test"] == {"num_videos": 1, "num_frames": 180, "num_anomalous_frames": 120}


def test_plain_tfds_builder_with_manual_dir(tmp_path):
    """The builder works as a TFDS manual-download builder, without jaxvad.data_prep."""
    source = synthetic.write_ped2_layout(tmp_path / "src", synthetic.TINY)
    config = builder.VadConfig.make("ped2", size=24, flow="dis")
    ds_builder = builder.Ped2(config=config, data_dir=str(tmp_path / "out"), workers=1)
    ds_builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(source)),
    )
    dataset_dir = tmp_path / "out" / "ped2" / "24_dis" / "1.0.0"
    assert Path(ds_builder.data_dir) == dataset_dir
    read_back = tfds.builder_from_directory(str(dataset_dir))
    record = read_back.as_data_source("test")[0]
    assert record["frame"].shape == (24, 24, 1) and record["frame"].dtype == np.uint8
    assert record["flow"].shape == (24, 24, 2) and record["flow"].dtype == np.float16
    assert record["mask"].shape == (24, 24)
    metadata = json.loads((dataset_dir / "metadata.json").read_text())
    assert metadata["splits"]["test"]["num_anomalous_frames"] > 0
    assert metadata["splits"]["train"]["num_anomalous_frames"] == 0
    assert metadata["flow"]["method"] == "dis"
    assert metadata["channels"] == 1


def test_config_names_and_validation():
    assert builder.VadConfig.make("ped2").name == "224_farneback"
    assert builder.VadConfig.make("avenue", label_version="interval").name == (
        "224_farneback_interval"
    )
    assert builder.VadConfig.make("synthetic", synthetic="tiny", seed=3).name == (
        "224_farneback_tiny_seed3"
    )
    with pytest.raises(ValueError, match="unknown flow method 'raft'"):
        builder.VadConfig.make("ped2", flow="raft")
    with pytest.raises(ValueError, match="size"):
        builder.VadConfig.make("ped2", size=4)
