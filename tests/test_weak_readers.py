"""Tests of the weakly labelled dataset readers (`jaxvad.data.weak`): fixtures written in the
published formats of UCF-Crime, XD-Violence, ShanghaiTech's weak split and the feature lists of
VadCLIP and RTFM (lines copied from the published files), each reader's bad inputs as named
errors with file and line, and the weakly labelled synthetic set."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from jaxvad.data import synthetic, weak
from jaxvad.data.video_io import DataError
from jaxvad.data.weak import WeakLabelError, WeakVideo

SHARED_MASKS = (
    Path(__file__).resolve().parents[2] / "shared/data/labels/shanghaitech/test_frame_mask"
)

UCF_ANNOTATIONS = """\
Abuse028_x264.mp4  Abuse  165  240  -1  -1
Arson011_x264.mp4  Arson  150  420  680  1267
Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1
RoadAccidents001_x264.mp4  RoadAccidents  210  300  -1  -1
"""
UCF_TEST_LIST = """\
Abuse/Abuse028_x264.mp4
Arson/Arson011_x264.mp4
RoadAccidents/RoadAccidents001_x264.mp4
Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4
"""
UCF_TRAIN_LIST = """\
Abuse/Abuse001_x264.mp4
Vandalism/Vandalism050_x264.mp4
Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4
"""
XD_ANNOTATIONS = """\
v=wVey5JDRf_g__#00-00-00_00-01-20_label_B6-0-0 51 210 273 410
Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 157 180 185 244
v=U6MC8JJJZSY__#1_label_G-0-0.mp4 150 779
"""
XD_NORMAL = "A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_A"
XD_TEST_CSV = f"""\
path,label
/home/x/XDTestClipFeatures/Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6__0.npy,G-B2-B6
/home/x/XDTestClipFeatures/v=wVey5JDRf_g__#00-00-00_00-01-20_label_B6-0-0__0.npy,B6-0-0
/home/x/XDTestClipFeatures/v=U6MC8JJJZSY__#1_label_G-0-0__0.npy,G-0-0
/home/x/XDTestClipFeatures/{XD_NORMAL}__0.npy,A
"""
SHT_TRAIN_LIST = """\
/home/yu/yu_ssd/SH_Train_ten_crop_i3d/01_0014_i3d.npy
/home/yu/yu_ssd/SH_Train_ten_crop_i3d/12_0175_i3d.npy
/home/yu/yu_ssd/SH_Train_ten_crop_i3d/01_002_i3d.npy
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def replace_line(text: str, number: int, line: str) -> str:
    lines = text.splitlines()
    lines[number - 1] = line
    return "\n".join(lines) + "\n"


def raises_at(path: Path | str, line: int | None, match: str):
    """pytest.raises for a WeakLabelError at `path`, `line` whose problem matches the regex
    `match`."""
    where = f"{path}, line {line}" if line is not None else f"{path}"
    return pytest.raises(WeakLabelError, match=re.escape(where) + ": .*" + match)


# ----------------------------------------------------------------------------- labels


def test_frame_labels_and_segments_are_inverse():
    labels = weak.frame_labels([(2, 4), (6, 7)], 9)
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 0, 0]
    assert labels.dtype == np.int32
    assert weak.label_segments(labels) == ((2, 4), (6, 7))
    assert weak.label_segments(np.ones(3)) == ((0, 3),)
    assert weak.label_segments(np.zeros(3)) == ()
    # Published ends may pass the decoded frames (cut there); a start past them may not.
    assert weak.frame_labels([(1, 50)], 4).tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="starts after"):
        weak.frame_labels([(4, 6)], 4)


def test_weak_video_checks_its_invariants():
    with pytest.raises(ValueError, match="categories"):
        WeakVideo("v", 1)
    with pytest.raises(ValueError, match="segments"):
        WeakVideo("v", 1, ("Abuse",), ())
    with pytest.raises(ValueError, match="segments"):
        WeakVideo("v", 0, (), ((0, 3),))


def test_error_names_file_and_line_and_survives_pickling():
    error = WeakLabelError("list.txt", 3, "bad")
    assert str(error) == "list.txt, line 3: bad"
    assert isinstance(error, DataError) and isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.line) == (str(error), "list.txt", 3)


# ----------------------------------------------------------------------------- UCF-Crime


def test_ucf_crime_test_list_with_annotations(tmp_path):
    annotations = write(
        tmp_path, "Temporal_Anomaly_Annotation_for_Testing_Videos.txt", UCF_ANNOTATIONS
    )
    videos = weak.read_ucf_crime(write(tmp_path, "Anomaly_Test.txt", UCF_TEST_LIST), annotations)
    assert videos == [
        WeakVideo("Abuse028_x264", 1, ("Abuse",), ((165, 240),)),
        WeakVideo("Arson011_x264", 1, ("Arson",), ((150, 420), (680, 1267))),
        WeakVideo("RoadAccidents001_x264", 1, ("RoadAccidents",), ((210, 300),)),
        WeakVideo("Normal_Videos_003_x264", 0, (), ()),
    ]
    labels = weak.frame_labels(videos[1].segments, 1300)
    assert labels.sum() == (420 - 150) + (1267 - 680)
    assert labels[149] == 0 and labels[150] == 1 and labels[419] == 1 and labels[420] == 0
    assert not weak.frame_labels(videos[3].segments, 100).any()


def test_ucf_crime_train_list_and_feature_lists(tmp_path):
    videos = weak.read_ucf_crime(write(tmp_path, "Anomaly_Train.txt", UCF_TRAIN_LIST))
    assert [(v.name, v.label, v.categories, v.segments) for v in videos] == [
        ("Abuse001_x264", 1, ("Abuse",), None),
        ("Vandalism050_x264", 1, ("Vandalism",), None),
        ("Normal_Videos001_x264", 0, (), None),
    ]
    # VadCLIP's CSV (every crop listed) and RTFM's list name the same videos.
    crops = "".join(
        f"/home/x/UCFClipFeatures/{folder}/{name}__{k}.npy,{label}\n"
        for folder, name, label in [
            ("Abuse", "Abuse001_x264", "Abuse"),
            ("Vandalism", "Vandalism050_x264", "Vandalism"),
            ("Training_Normal_Videos_Anomaly", "Normal_Videos001_x264", "Normal"),
        ]
        for k in range(10)
    )
    csv_list = write(tmp_path, "ucf_CLIP_rgb.csv", "path,label\n" + crops)
    rtfm = "".join(f"G:\\UCF_Train_ten_crop_i3d\\{v.name}_i3d.npy\n" for v in videos)
    assert weak.read_ucf_crime(csv_list) == videos
    assert weak.read_ucf_crime(write(tmp_path, "ucf-i3d.list", rtfm)) == videos
    assert weak.read_ucf_crime([v.name for v in videos]) == videos


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Arson011_x264.mp4  Arson  150  420  680", "expected `video class start1"),
        ("Arson011_x264.mp4  Arson  150  abc  -1  -1", "must be integers"),
        ("Arson011_x264.mp4  Kidnapping  150  420  -1  -1", "unknown UCF-Crime category"),
        ("Arson011_x264.mp4  Abuse  150  420  -1  -1", "class 'Abuse', but Arson011_x264 is Arson"),
        ("Arson011_x264.mp4  Arson  420  150  -1  -1", "bad segment (420, 150)"),
        ("Arson011_x264.mp4  Arson  -1  -1  -1  -1", "Arson011_x264 (Arson) needs a segment"),
        (
            "Normal_Videos_003_x264.mp4  Normal  5  9  -1  -1",
            "Normal_Videos_003_x264 (Normal) needs no segment",
        ),
        ("Abuse028_x264.mp4  Abuse  165  240  -1  -1", "annotated twice"),
    ],
)
def test_ucf_crime_bad_annotation_lines(tmp_path, line, problem):
    path = write(tmp_path, "annotations.txt", replace_line(UCF_ANNOTATIONS, 2, line))
    with raises_at(path, 2, re.escape(problem)):
        weak.read_ucf_crime(write(tmp_path, "Anomaly_Test.txt", UCF_TEST_LIST), path)


def test_ucf_crime_bad_lists(tmp_path):
    annotations = write(tmp_path, "annotations.txt", UCF_ANNOTATIONS)
    unknown = write(tmp_path, "a.txt", UCF_TRAIN_LIST + "Kidnapping/Kidnapping001_x264.mp4\n")
    with raises_at(unknown, 4, "unknown UCF-Crime category 'Kidnapping'"):
        weak.read_ucf_crime(unknown)
    not_ucf = write(tmp_path, "b.txt", "Abuse/Abuse001.mp4\n")
    with raises_at(not_ucf, 1, "not a UCF-Crime name"):
        weak.read_ucf_crime(not_ucf)
    # A test list naming a video the annotation file lacks (here: a training video).
    test_list = write(tmp_path, "Anomaly_Test.txt", UCF_TEST_LIST + "Abuse/Abuse001_x264.mp4\n")
    with raises_at(test_list, 5, f"Abuse001_x264 has no line in {annotations}"):
        weak.read_ucf_crime(test_list, annotations)
    with raises_at("<names>", 2, "not a UCF-Crime name"):
        weak.read_ucf_crime(["Abuse001_x264", "clip.mp4"])
    with raises_at(tmp_path / "empty.txt", None, "names no video"):
        weak.read_ucf_crime(write(tmp_path, "empty.txt", "\n"))


# ----------------------------------------------------------------------------- XD-Violence


def test_xd_violence_test_list_with_annotations(tmp_path):
    annotations = write(tmp_path, "annotations.txt", XD_ANNOTATIONS)
    videos = weak.read_xd_violence(write(tmp_path, "xd_CLIP_rgbtest.csv", XD_TEST_CSV), annotations)
    assert videos == [
        WeakVideo(
            "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6",
            1,
            ("explosion", "shooting", "car accident"),
            ((157, 180), (185, 244)),
        ),
        WeakVideo(
            "v=wVey5JDRf_g__#00-00-00_00-01-20_label_B6-0-0",
            1,
            ("car accident",),
            ((51, 210), (273, 410)),
        ),
        WeakVideo("v=U6MC8JJJZSY__#1_label_G-0-0", 1, ("explosion",), ((150, 779),)),
        WeakVideo(XD_NORMAL, 0, (), ()),
    ]
    assert set(weak.XD_VIOLENCE_CATEGORIES) == set(weak.XD_VIOLENCE_CODES.values())
    assert weak.XD_VIOLENCE_CATEGORIES[0] == "normal"


def test_xd_violence_training_names(tmp_path):
    names = [XD_NORMAL, "Fury.2014__#00-39-36_00-40-44_label_B1-B2-0", "v=x__#1_label_B5"]
    videos = weak.read_xd_violence(names)
    assert [(v.label, v.categories, v.segments) for v in videos] == [
        (0, (), None),
        (1, ("fighting", "shooting"), None),
        (1, ("abuse",), None),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 157 180 185",
            "expected `video start end",
        ),
        ("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6", "expected `video start end"),
        ("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 157 x", "must be integers"),
        ("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 180 157", "bad segment (180, 157)"),
        (
            "Bad.Boys.1995__#01-11-55_01-12-40_label_B3-0-0 1 2",
            "unknown XD-Violence category code 'B3'",
        ),
        ("Bad.Boys.1995__#01-11-55_01-12-40_label_0-B2-0 1 2", "neither A nor one to three codes"),
        (f"{XD_NORMAL} 1 2", "is normal (label A) but has segments"),
        ("Bad.Boys.1995__#01-11-55_01-12-40 1 2", "no `_label_`"),
        ("v=wVey5JDRf_g__#00-00-00_00-01-20_label_B6-0-0 1 2", "annotated twice"),
    ],
)
def test_xd_violence_bad_annotation_lines(tmp_path, line, problem):
    path = write(tmp_path, "annotations.txt", replace_line(XD_ANNOTATIONS, 2, line))
    with raises_at(path, 2, re.escape(problem)):
        weak.read_xd_violence(write(tmp_path, "test.csv", XD_TEST_CSV), path)


def test_xd_violence_bad_lists(tmp_path):
    annotations = write(tmp_path, "annotations.txt", XD_ANNOTATIONS)
    missing = (
        XD_TEST_CSV + "/home/x/Casino.Royale.2006__#00-18-30_00-19-20_label_G-B2-0__0.npy,G-B2-0\n"
    )
    test_list = write(tmp_path, "test.csv", missing)
    with raises_at(test_list, 6, "Casino.Royale.2006__#00-18-30_00-19-20_label_G-B2-0 has no line"):
        weak.read_xd_violence(test_list, annotations)
    with raises_at("<names>", 1, "unknown XD-Violence category code 'B9'"):
        weak.read_xd_violence(["v=x__#1_label_B9-0-0"])


# ----------------------------------------------------------------------------- ShanghaiTech


def test_shanghaitech_labels_follow_the_clip_names(tmp_path):
    videos = weak.read_shanghaitech_weak(write(tmp_path, "sh-train.list", SHT_TRAIN_LIST))
    assert videos == [
        WeakVideo("01_0014", 1, ("anomaly",)),
        WeakVideo("12_0175", 1, ("anomaly",)),
        WeakVideo("01_002", 0),
    ]


def test_shanghaitech_frame_labels_from_frame_masks(tmp_path):
    masks = tmp_path / "test_frame_mask"
    masks.mkdir()
    np.save(masks / "01_0014.npy", np.array([0, 1, 1, 0, 0, 1], np.uint8))
    np.save(masks / "12_0175.npy", np.array([0, 0, 0], np.uint8))
    videos = weak.read_shanghaitech_weak(["01_0014", "01_045"], masks)
    assert videos == [
        WeakVideo("01_0014", 1, ("anomaly",), ((1, 3), (5, 6)), 6),
        WeakVideo("01_045", 0, (), ()),
    ]
    assert weak.frame_labels(videos[0].segments, videos[0].frames).tolist() == [0, 1, 1, 0, 0, 1]
    with raises_at(masks / "12_0175.npy", None, "without anomalous frames"):
        weak.read_shanghaitech_weak(["12_0175"], masks)
    with raises_at("<names>", 2, "frame labels .*01_0015.npy of 01_0015 not found"):
        weak.read_shanghaitech_weak(["01_0014", "01_0015"], masks)
    with raises_at("<names>", 1, "is not a ShanghaiTech clip"):
        weak.read_shanghaitech_weak(["Abuse001_x264"])


def test_shanghaitech_real_frame_masks_round_trip():
    if not SHARED_MASKS.is_dir():
        pytest.skip(f"real labels not available here: {SHARED_MASKS} is missing")
    names = ["01_0014", "01_0015", "07_0047", "01_001"]  # from RTFM's shanghai-i3d lists
    videos = weak.read_shanghaitech_weak(names, SHARED_MASKS)
    assert [v.label for v in videos] == [1, 1, 1, 0]
    for video in videos[:3]:
        mask = np.load(SHARED_MASKS / f"{video.name}.npy")
        assert video.frames == len(mask)
        np.testing.assert_array_equal(weak.frame_labels(video.segments, video.frames), mask)


# ----------------------------------------------------------------------------- features


def write_crops(folder: Path, video: str, snippets: list[int], width: int, seed: int) -> list[Path]:
    """VadCLIP's layout: `<video>__<k>.npy`, `[snippets_k, width]` float32 for crop k."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, n in enumerate(snippets):
        paths.append(folder / f"{video}__{k}.npy")
        np.save(paths[-1], rng.standard_normal((n, width)).astype(np.float32))
    return paths


def csv_list(paths: list[str], label: str = "Abuse") -> str:
    return "path,label\n" + "".join(f"{p},{label}\n" for p in paths)


def test_features_in_vadclips_layout(tmp_path):
    features = tmp_path / "UCFClipFeatures"
    abuse = write_crops(features / "Abuse", "Abuse001_x264", [5, 5, 5], 8, seed=0)
    normal = write_crops(
        features / "Training_Normal_Videos_Anomaly", "Normal_Videos001_x264", [3] * 3, 8, 1
    )
    # The published CSV holds its authors' absolute paths; files are found by name.
    listed = [f"/home/x/UCFClipFeatures/{p.parent.name}/{p.name}" for p in abuse + normal]
    list_file = write(tmp_path, "ucf_CLIP_rgb.csv", csv_list(listed[::-1]))
    read = weak.read_features(list_file, features, width=8)
    assert list(read) == ["Normal_Videos001_x264", "Abuse001_x264"]
    video = read["Abuse001_x264"]
    assert (video.crops, video.snippets, video.width, video.files) == (3, 5, 8, tuple(abuse))
    loaded = video.load()
    assert loaded.shape == (3, 5, 8) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[2], np.load(abuse[2]))
    # Without a feature folder, paths are read as written (relative: from the list's folder).
    relative = [str(p.relative_to(tmp_path)) for p in abuse[:1]]
    single = weak.read_features(write(tmp_path, "one.txt", "\n".join(relative)), width=8)
    assert single["Abuse001_x264"].load().shape == (1, 5, 8)


def test_features_in_rtfms_layout(tmp_path):
    array = np.random.default_rng(0).standard_normal((7, 10, 16)).astype(np.float32)
    np.save(tmp_path / "01_0014_i3d.npy", array)
    list_file = write(tmp_path, "shanghai-i3d-test-10crop.list", "G:\\SH_Test\\01_0014_i3d.npy\n")
    video = weak.read_features(list_file, tmp_path, width=16)["01_0014"]
    assert (video.crops, video.snippets) == (10, 7)
    np.testing.assert_array_equal(video.load(), array.transpose(1, 0, 2))
    assert weak.read_shanghaitech_weak(list_file)[0].name == "01_0014"


def test_features_bad_inputs(tmp_path):
    features = tmp_path / "features"
    abuse = write_crops(features, "Abuse001_x264", [5, 5], 8, seed=0)
    listed = [str(p) for p in abuse]

    missing = write(tmp_path, "missing.csv", csv_list([*listed, "/x/Abuse002_x264__0.npy"]))
    with raises_at(missing, 4, "feature file /x/Abuse002_x264__0.npy of Abuse002_x264 not found"):
        weak.read_features(missing, features, width=8)
    with raises_at(missing, 4, "not found"):
        weak.read_features(missing, width=8)

    with raises_at(missing, 2, f"{abuse[0]}: features of width 8, expected 512"):
        weak.read_features(missing, width=512)

    write_crops(features, "Abuse003_x264", [5, 4], 8, seed=0)
    uneven = write(
        tmp_path, "uneven.csv", csv_list([*listed, "Abuse003_x264__0.npy", "Abuse003_x264__1.npy"])
    )
    with raises_at(uneven, 5, "Abuse003_x264: crop 1 .* has 4 snippets, crop 0 .* has 5"):
        weak.read_features(uneven, features, width=8)

    twice = write(tmp_path, "twice.csv", csv_list([*listed, listed[0]]))
    with raises_at(twice, 4, "repeats a crop"):
        weak.read_features(twice, width=8)

    np.save(features / "Abuse004_x264__0.npy", np.zeros((5, 8), np.int64))
    ints = write(tmp_path, "ints.txt", "Abuse004_x264__0.npy\n")
    with raises_at(ints, 1, "int64 array"):
        weak.read_features(ints, features, width=8)

    (features / "Abuse005_x264__0.npy").write_bytes(b"not an npy file")
    broken = write(tmp_path, "broken.txt", "Abuse005_x264__0.npy\n")
    with raises_at(broken, 1, "unreadable .npy"):
        weak.read_features(broken, features, width=8)

    with raises_at(tmp_path / "nowhere", None, "feature folder not found"):
        weak.read_features(missing, tmp_path / "nowhere", width=8)


# ----------------------------------------------------------------------------- synthetic


TINY_WEAK = weak.WeakSyntheticSpec(
    train_normal=2, train_anomalous=5, test_normal=1, test_anomalous=2, min_frames=16, max_frames=20
)


@pytest.fixture(scope="module")
def synthetic_splits():
    return {split: weak.synthetic_weak_videos(TINY_WEAK, split) for split in ("train", "test")}


def test_synthetic_weak_labels_match_the_generated_anomalies(synthetic_splits):
    assert set(weak.SYNTHETIC_KIND_CATEGORIES) == set(synthetic.ANOMALY_KINDS)
    train, test = synthetic_splits["train"], synthetic_splits["test"]
    assert [v.label for v, _ in train] == [0] * 2 + [1] * 5
    assert [v.label for v, _ in test] == [0] + [1] * 2
    # Five consecutive anomalous videos hold every category.
    assert {c for v, _ in train for c in v.categories} == set(weak.SYNTHETIC_CATEGORIES[1:])
    base = TINY_WEAK.generator_spec()
    for split, videos in synthetic_splits.items():
        for video, frames in videos:
            clip_split = "train" if video.name.startswith("Train") else "test"
            clip = int(video.name[-3:]) - 1
            expected, masks, records = synthetic.generate_clip(base, clip_split, clip)
            np.testing.assert_array_equal(frames, expected)
            assert frames.shape[1:] == (64, 64) and video.frames == len(frames)
            assert set(video.categories) == {
                weak.SYNTHETIC_KIND_CATEGORIES[r["kind"]] for r in records
            }
            if split == "train":
                assert video.segments is None
            else:  # frame labels: the frames where anomalous pixels show
                flags = np.zeros(len(frames)) if masks is None else masks.any(axis=(1, 2))
                labels = weak.frame_labels(video.segments, video.frames)
                np.testing.assert_array_equal(labels, flags)
    # The test split's clips follow the training split's.
    assert [v.name for v, _ in test] == ["Train003", "Test006", "Test007"]


def test_synthetic_weak_set_is_deterministic_per_seed(synthetic_splits):
    again = weak.synthetic_weak_videos(TINY_WEAK, "test")
    other = weak.synthetic_weak_videos(dataclasses.replace(TINY_WEAK, seed=1), "test")
    for (video, frames), (video2, frames2) in zip(synthetic_splits["test"], again, strict=True):
        assert video == video2
        np.testing.assert_array_equal(frames, frames2)
    assert any(
        not np.array_equal(a, b)
        for (_, a), (_, b) in zip(synthetic_splits["test"], other, strict=True)
    )
    with pytest.raises(ValueError, match="split"):
        weak.synthetic_weak_videos(TINY_WEAK, "val")
