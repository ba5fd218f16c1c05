"""Tests of the dataset readers: tiny fixtures written in each official layout (Ped2 official and
repackaged, CUHK Avenue, ShanghaiTech), and the real label files and Ped2 data under
`../shared/data` (skipped with a reason where that folder is missing)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from jaxvad.data import readers
from jaxvad.data.readers import ImageMasks, RangeLabels, VideoSpec
from jaxvad.data.video_io import DataError, numbered_images

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JPEG_TOLERANCE = 6  # grey levels, on big uniform blocks


def shared(*parts: str) -> Path:
    """A path under `../shared/data`; skips the test when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available here: {path} is missing (see its README)")
    return path


def assert_frame_order(frames: np.ndarray, tolerance: int, colour: bool, vad_writers) -> None:
    """Each frame k (0-based) is uniform `frame_value(k)` (right half, for colour sources whose
    left half is red)."""
    w = vad_writers.size[1]
    grey = frames[:, :, w // 2 + 2 :, :] if colour else frames
    for k, frame in enumerate(grey):
        assert abs(float(np.median(frame)) - vad_writers.frame_value(k)) <= tolerance, k
    if colour:
        red = frames[:, 2:-2, 2 : w // 2 - 2].reshape(-1, 3).mean(0)
        assert red[0] > 150 and red[1] < 60 and red[2] < 60, red  # RGB order


# ----------------------------------------------------------------------------- CUHK Avenue


@pytest.fixture
def avenue(tmp_path, vad_writers):
    root = tmp_path / "avenue"
    return root, vad_writers.avenue(root, lengths=(5, 6), train=(4,))


def test_avenue_mask_version(avenue, vad_writers):
    root, expected = avenue
    specs = readers.avenue_videos(root, "mask")
    assert [s.name for s in specs["train"]] == ["01"]
    assert [s.name for s in specs["test"]] == ["01", "02"]
    train = specs["train"][0].load()
    assert train.frames.shape == (4, *vad_writers.size, 3)
    assert train.labels is None and train.masks is None
    assert_frame_order(train.frames, JPEG_TOLERANCE, True, vad_writers)
    for spec, labels, n in zip(specs["test"], expected["mask"], (5, 6), strict=True):
        video = spec.load()
        assert video.frames.shape == (n, *vad_writers.size, 3)
        assert_frame_order(video.frames, JPEG_TOLERANCE, True, vad_writers)
        masks = np.stack([vad_writers.mask_of(k, bool(f)) for k, f in enumerate(labels)])
        np.testing.assert_array_equal(video.masks, masks)
        # A frame is abnormal exactly when its mask has a pixel.
        np.testing.assert_array_equal(video.labels, video.masks.any(axis=(1, 2)))
        np.testing.assert_array_equal(video.labels, labels)
        assert 0 < video.labels.sum() < n


def test_avenue_interval_version(avenue):
    root, expected = avenue
    specs = readers.avenue_videos(root, "interval")
    for spec, labels, mask_labels in zip(
        specs["test"], expected["interval"], expected["mask"], strict=True
    ):
        video = spec.load()
        np.testing.assert_array_equal(video.labels, labels)
        assert not np.array_equal(video.labels, mask_labels)  # a real choice of versions
        assert video.masks is not None and len(video.masks) == len(labels)


def test_avenue_bad_label_version_and_missing_files(avenue):
    root, _ = avenue
    with pytest.raises(ValueError, match="label version"):
        readers.avenue_videos(root, "pixel")
    (root / "frame_labels_avenue.npy").unlink()
    with pytest.raises(DataError, match=re.escape(str(root / "frame_labels_avenue.npy"))):
        readers.avenue_videos(root, "interval")
    mat = root / "testing_label_mask" / "2_label.mat"
    mat.unlink()
    with pytest.raises(DataError, match=re.escape(str(mat))):
        readers.avenue_videos(root, "mask")


# ----------------------------------------------------------------------------- ShanghaiTech


@pytest.mark.parametrize("masks_under_testing", [False, True], ids=["top", "under_testing"])
def test_shanghaitech(tmp_path, vad_writers, masks_under_testing):
    root = tmp_path / "sht"
    expected = vad_writers.shanghaitech(root, masks_under_testing=masks_under_testing)
    specs = readers.shanghaitech_videos(root)
    assert [s.name for s in specs["train"]] == ["01_001"]
    assert [s.name for s in specs["test"]] == list(expected)
    assert specs["train"][0].load().frames.shape == (4, *vad_writers.size, 3)
    for spec, (clip, labels) in zip(specs["test"], expected.items(), strict=True):
        video = spec.load()
        assert video.frames.shape == (len(labels), *vad_writers.size, 3), clip
        assert_frame_order(video.frames, JPEG_TOLERANCE, True, vad_writers)  # 000.jpg first
        np.testing.assert_array_equal(video.labels, labels)
        masks = np.stack([vad_writers.mask_of(k, bool(f)) for k, f in enumerate(labels)])
        np.testing.assert_array_equal(video.masks, masks)


def test_shanghaitech_missing_frame_mask(tmp_path, vad_writers):
    root = tmp_path / "sht"
    vad_writers.shanghaitech(root)
    (root / "test_frame_mask" / "01_0015.npy").unlink()
    with pytest.raises(DataError, match=re.escape(str(root / "test_frame_mask" / "01_0015.npy"))):
        readers.shanghaitech_videos(root)


# ----------------------------------------------------------------------------- UCSD Ped2

PED2_RANGES = [[(2, 3), (5, 6)], [(1, 11)]]
PED2_LABELS = [[0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0], [1] * 11]


@pytest.mark.parametrize("repackaged", [False, True], ids=["official", "repackaged"])
def test_ped2_layouts(tmp_path, vad_writers, repackaged):
    root = vad_writers.ped2(
        tmp_path / "ped2", PED2_RANGES, lengths=(11, 11), train=(4, 5), repackaged=repackaged
    )
    specs = readers.ped2_videos(root)
    assert [s.name for s in specs["train"]] == ["Train001", "Train002"]
    assert [s.name for s in specs["test"]] == ["Test001", "Test002"]
    # mp4v is lossy; uncompressed .tif is exact.
    tolerance = 4 if repackaged else 0
    for spec, n in zip(specs["train"], (4, 5), strict=True):
        video = spec.load()
        assert video.frames.shape == (n, *vad_writers.size, 1)  # gray, even from mp4
        assert_frame_order(video.frames, tolerance, False, vad_writers)
    for spec, labels in zip(specs["test"], PED2_LABELS, strict=True):
        video = spec.load()
        assert video.frames.shape == (11, *vad_writers.size, 1)
        assert_frame_order(video.frames, tolerance, False, vad_writers)
        np.testing.assert_array_equal(video.labels, labels)
        # Masks follow the frame numbers (frame10.png after frame9.png, not after frame1.png):
        # mask k covers 8 × k pixels where frame k is abnormal.
        expected = [8 * k * flag for k, flag in enumerate(labels, 1)]
        np.testing.assert_array_equal(video.masks.sum(axis=(1, 2)), expected)


def test_ped2_masks_matched_by_number_not_name(tmp_path, vad_writers):
    root = vad_writers.ped2(tmp_path / "ped2", PED2_RANGES[:1], lengths=(11,), repackaged=True)
    gt = root / "Test" / "Test001_gt"
    names = [p.name for p in numbered_images(gt)]
    assert names == [f"frame{k}.png" for k in range(1, 12)]
    assert sorted(names) != names  # lexical order would put frame10 after frame1


def test_read_ucsd_m_ranges(tmp_path):
    path = tmp_path / "UCSDped2.m"
    path.write_text(
        "TestVideoFile = {};\n"
        "TestVideoFile{end+1}.gt_frame = [2:3, 5:6];\n"
        "  TestVideoFile{end+1}.gt_frame = [61:180];  \n"
        "TestVideoFile{end+1}.gt_frame=[1 : 4,7:7]\n"
    )
    ranges = readers.read_ucsd_m(path)
    assert ranges == [[(2, 3), (5, 6)], [(61, 180)], [(1, 4), (7, 7)]]
    labels = RangeLabels(path, tuple(ranges[0])).load(7, "Test001")
    np.testing.assert_array_equal(labels, [0, 1, 1, 0, 1, 1, 0])
    with pytest.raises(DataError, match="runs past"):
        RangeLabels(path, tuple(ranges[1])).load(179, "Test002")


@pytest.mark.parametrize(
    "line",
    ["TestVideoFile{end+1}.gt_frame = [2:3, 5:6;", "TestVideoFile{end+1}.gt_frame = [3:2];"],
)
def test_read_ucsd_m_malformed(tmp_path, line):
    path = tmp_path / "UCSDped2.m"
    path.write_text(f"TestVideoFile = {{}};\n{line}\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line 2"):
        readers.read_ucsd_m(path)


def test_read_keyed_mat_labels(tmp_path):
    path = tmp_path / "labels.mat"
    scipy.io.savemat(path, {"02": np.array([[0, 1, 1]]), "01": np.array([[1.0], [0.0]])})
    labels = readers.read_keyed_mat_labels(path)  # scipy's `__header__` etc. are not videos
    assert list(labels) == ["01", "02"]
    np.testing.assert_array_equal(labels["01"], [1, 0])
    np.testing.assert_array_equal(labels["02"], [0, 1, 1])
    assert labels["01"].dtype == np.int32
    scipy.io.savemat(path, {"01": np.array([0, 2])})
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: video 01: .*0 or 1"):
        readers.read_keyed_mat_labels(path)


def test_load_npy_and_split_concatenated(tmp_path):
    path = tmp_path / "frame_labels.npy"
    np.save(path, np.array([[0, 1, 1, 0, 1]], np.int8))  # `[1, F]`, as the real files
    np.testing.assert_array_equal(readers.load_npy(path, 1), [0, 1, 1, 0, 1])
    parts = readers.split_concatenated(path, [2, 3])
    assert [p.tolist() for p in parts] == [[0, 1], [1, 0, 1]]
    with pytest.raises(DataError, match="holds 5 frame labels, the videos have 6"):
        readers.split_concatenated(path, [3, 3])
    with pytest.raises(DataError, match=r"expected a 3-d array, found shape \(1, 5\)"):
        readers.load_npy(path, 3)


# ----------------------------------------------------------------------------- real label files


def test_real_ped2_m_equals_concatenated_labels():
    m_file = shared("ped2", "Test", "UCSDped2.m")
    ranges = readers.read_ucsd_m(m_file)
    assert len(ranges) == 12
    lengths = [len(numbered_images(m_file.parent / f"Test{i:03d}_gt")) for i in range(1, 13)]
    labels = [
        RangeLabels(m_file, tuple(r)).load(n, f"Test{i:03d}")
        for i, (r, n) in enumerate(zip(ranges, lengths, strict=True), 1)
    ]
    concatenated = readers.load_npy(shared("labels", "concatenated", "frame_labels_ped2.npy"), 1)
    np.testing.assert_array_equal(np.concatenate(labels), concatenated)
    assert (len(concatenated), int(concatenated.sum())) == (2010, 1648)


def test_real_avenue_label_versions():
    mask_derived = readers.read_keyed_mat_labels(
        shared("labels", "avenue", "avenue_mask_derived.mat")
    )
    assert list(mask_derived) == [f"{i:02d}" for i in range(1, 22)]
    lengths = [len(v) for v in mask_derived.values()]
    assert sum(lengths) == 15324
    assert sum(int(v.sum()) for v in mask_derived.values()) == 3712
    entirely = [name for name, v in mask_derived.items() if v.all()]
    assert entirely == ["08", "18"]
    interval = readers.split_concatenated(
        shared("labels", "concatenated", "frame_labels_avenue.npy"), lengths
    )
    assert [len(v) for v in interval] == lengths
    assert sum(int(v.sum()) for v in interval) == 3867
    differ = [
        a for a, b in zip(mask_derived.values(), interval, strict=True) if not np.array_equal(a, b)
    ]
    assert len(differ) == 15


def test_real_shanghaitech_frame_masks_equal_concatenated():
    files = sorted(shared("labels", "shanghaitech", "test_frame_mask").glob("*.npy"))
    assert len(files) == 107
    per_video = np.concatenate([readers.load_npy(f, 1) for f in files])
    concatenated = readers.load_npy(
        shared("labels", "concatenated", "frame_labels_shanghai.npy"), 1
    )
    np.testing.assert_array_equal(per_video, concatenated)
    assert (len(concatenated), int(concatenated.sum())) == (40791, 17326)


# ----------------------------------------------------------------------------- real Ped2 data


@pytest.fixture(scope="module")
def ped2_full() -> dict[str, list[VideoSpec]]:
    return readers.ped2_videos(shared("ped2"))


def test_real_ped2_official_sample_matches_repackaged(ped2_full):
    sample = shared("ped2", "official_sample")
    # The sample holds only Train001/Test001 next to the full 12-line `.m`: entries are matched
    # to clips by number, so Test001 gets entry 1.
    m_file = sample / "Test" / "UCSDped2.m"
    assert len(readers.read_ucsd_m(m_file)) == 12
    specs = readers.ped2_videos(sample)
    assert [s.name for s in specs["train"]] == ["Train001"]
    assert [s.name for s in specs["test"]] == ["Test001"]
    assert specs["test"][0].labels == RangeLabels(m_file, ((61, 180),))
    assert specs["test"][0].masks == ImageMasks(sample / "Test" / "Test001_gt")
    train, test = specs["train"][0].load(), specs["test"][0].load()
    assert train.frames.shape == (120, 240, 360, 1)
    assert test.frames.shape == (180, 240, 360, 1)
    assert int(test.labels.sum()) == 120
    assert len(test.masks) == 180

    repackaged_train = ped2_full["train"][0]
    repackaged_test = ped2_full["test"][0]
    assert (repackaged_train.name, repackaged_test.name) == ("Train001", "Test001")
    rep_train, rep_test = repackaged_train.load(), repackaged_test.load()
    np.testing.assert_array_equal(test.masks, rep_test.masks)  # .bmp == .png, exactly
    np.testing.assert_array_equal(test.labels, rep_test.labels)
    for official, repackaged in ((train, rep_train), (test, rep_test)):
        assert official.frames.shape == repackaged.frames.shape
        diff = np.abs(official.frames.astype(np.int16) - repackaged.frames.astype(np.int16))
        assert diff.mean() < 3.0
        assert diff.mean(axis=(1, 2, 3)).max() < 3.0  # every frame
        shifted = np.abs(official.frames[1:].astype(np.int16) - repackaged.frames[:-1])
        assert diff.mean() < shifted.mean()  # frames in the same order, none dropped


def test_real_ped2_repackaged_listing_and_frame_named_masks(ped2_full):
    assert [s.name for s in ped2_full["train"]] == [f"Train{i:03d}" for i in range(1, 17)]
    assert [s.name for s in ped2_full["test"]] == [f"Test{i:03d}" for i in range(1, 13)]
    m_file = shared("ped2", "Test", "UCSDped2.m")
    ranges = readers.read_ucsd_m(m_file)
    for number in (6, 9, 12):
        spec = ped2_full["test"][number - 1]
        assert spec.name == f"Test{number:03d}"
        assert all(p.name.startswith("frame") for p in numbered_images(spec.masks.folder))
        video = spec.load()
        assert len(video.masks) == len(video.frames) == len(video.labels)
        expected = RangeLabels(m_file, tuple(ranges[number - 1])).load(len(video.frames), "x")
        np.testing.assert_array_equal(video.labels, expected)
