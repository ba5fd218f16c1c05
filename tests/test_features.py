"""`python -m jaxvad.features`: CLIP snippet features in VadCLIP's layout, with the tiny random
CLIP of `clip_saved` (16×16 input, E = 24).

Layout and list files (read back by `weak.read_features`), snippet pooling against embeddings
computed directly, the ten-crop's geometry and flips, object fusion (auto detector and MOT
boxes), resume, decoding of real-dataset layouts written with OpenCV, and the one-line errors.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_shanghaitech, write_video

from jaxvad import features
from jaxvad.data import clip_features, objects, weak
from jaxvad.data.video_io import read_frames
from jaxvad.vlm.clip import Clip

S, E = 16, 24  # the small CLIP's input size and embedding width
BATCH = 32  # one batch size everywhere: the image tower compiles once
TINY = weak.WeakSyntheticSpec(1, 1, 1, 1, min_frames=9, max_frames=13, height=48, width=48)


@pytest.fixture(scope="module")
def clip_folder(clip_saved) -> Path:
    return clip_saved["small"].folder


@pytest.fixture(scope="module")
def encoder(clip_folder) -> Clip:
    return Clip.load(clip_folder)


def settings(encoder: Clip, **changes) -> clip_features.Settings:
    fields = {
        "dataset": "synthetic_weak",
        "clip": "tiny",
        "snippet": 4,
        "crops": 1,
        "objects": "none",
        "width": E,
    }
    return clip_features.Settings(**(fields | changes))


def random_frames(seed: int, n: int, height: int = 18, width: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("crops", [1, 10])
def test_the_command_writes_vadclip_files_and_lists(clip_folder, tmp_path, capsys, crops):
    output = tmp_path / "features"
    args = [f"--clip={clip_folder}", "--dataset=synthetic_weak", f"--output={output}"]
    code = features.main([*args, "--snippet=8", f"--crops={crops}", f"--batch={BATCH}"])
    assert code == 0
    assert "s per video" in capsys.readouterr().out
    for split in clip_features.SPLITS:
        videos = weak.synthetic_weak_videos(weak.WeakSyntheticSpec(), split)
        found = weak.read_features(output / f"{split}.csv", width=E)
        assert list(found) == [video.name for video, _ in videos]
        for video, frames in videos:
            item = found[video.name]
            assert item.crops == crops and item.snippets == math.ceil(len(frames) / 8)
            for k in range(crops):
                array = np.load(output / f"{video.name}__{k}.npy")
                assert array.dtype == np.float32 and array.shape == (item.snippets, E)
        labels = (output / f"{split}.csv").read_text().splitlines()
        assert labels[0] == "path,label"
        assert f"{videos[0][0].name}__0.npy,normal" in labels  # normal videos come first


# ----------------------------------------------------------------------------- values


def test_crop_views_cut_the_centre_corners_and_their_flips():
    frames = random_frames(0, 3)  # short edge 18 = round(16 · 256/224): no resize
    views = clip_features.crop_views(frames, S, 10)
    assert views.shape == (10, 3, S, S, 3)
    expected = [
        frames[:, 1:17, 4:20],
        frames[:, :16, :16],
        frames[:, :16, 8:],
        frames[:, 2:, :16],
        frames[:, 2:, 8:],
    ]
    for k, view in enumerate(expected):
        np.testing.assert_array_equal(views[k], view)
        np.testing.assert_array_equal(views[k + 5], view[:, :, ::-1])
    np.testing.assert_array_equal(clip_features.crop_views(frames, S, 1)[0], views[0])
    assert clip_features.crop_views(random_frames(0, 2, 60, 40), S, 10).shape == (10, 2, S, S, 3)


def test_a_snippet_is_the_mean_of_its_frames_embeddings(encoder):
    frames = random_frames(1, 10, 30, 40)
    got = clip_features.video_features(encoder, frames, snippet=4, crops=1, batch=BATCH)
    direct = encoder.encode_images(clip_features.crop_views(frames, S, 1)[0])  # [10, E]
    padded = np.concatenate([direct, direct[-1:], direct[-1:]])  # the last frame repeated
    expected = padded.reshape(3, 4, E).mean(axis=1)
    assert got.shape == (1, 3, E)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    # Not the centre frame, nor a renormalised mean: frames differ.
    assert np.abs(got[0, 0] - direct[1]).max() > 1e-3


def test_ten_crops_flip_a_crop_and_a_symmetric_image_gives_equal_twins(encoder):
    frames = random_frames(2, 2)
    got = clip_features.video_features(encoder, frames, snippet=1, crops=10, batch=BATCH)
    assert got.shape == (10, 2, E)
    assert np.abs(got[0] - got[5]).max() > 1e-3
    symmetric = np.concatenate([frames[:, :, :12], frames[:, :, :12][:, :, ::-1]], axis=2)
    got = clip_features.video_features(encoder, symmetric, snippet=1, crops=10, batch=BATCH)
    np.testing.assert_allclose(got[0], got[5], atol=1e-5)  # the centre view is symmetric
    np.testing.assert_allclose(got[1], got[7], atol=1e-5)  # top-left mirrors top-right
    assert np.abs(got[1] - got[6]).max() > 1e-3


# ----------------------------------------------------------------------------- objects


def moving_object_clip() -> np.ndarray:
    """`[24, 64, 64, 3]`: a static noisy scene; a bright 16×16 square crosses it from frame 12."""
    rng = np.random.default_rng(3)
    scene = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
    frames = np.repeat(scene[None], 24, axis=0)
    frames = np.clip(frames + rng.normal(0, 2, frames.shape), 0, 255).astype(np.uint8)
    for t in range(12, 24):
        x = 2 + 4 * (t - 12)
        frames[t, 24:40, x : x + 16] = (230, 200, 40)
    return frames


def test_auto_objects_fill_the_object_half_where_a_box_exists(encoder):
    frames = moving_object_clip()
    boxes = clip_features.video_boxes("auto", "clip", frames)
    found = objects.video_objects(frames)  # data_prep's, velocities measured.
    unmeasured = objects.video_objects(frames, velocity=False)
    for a, b, c in zip(boxes, found.boxes, unmeasured.boxes, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for a, b in zip(found.tracks, unmeasured.tracks, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(v.shape == (len(b), 0) for v, b in zip(unmeasured.velocity, boxes, strict=True))
    assert any(v.any() for v in found.velocity)
    with_box = np.array([len(b) > 0 for b in boxes])
    assert not with_box[:12].any() and with_box[13:].all(), with_box
    fused = clip_features.video_features(encoder, frames, boxes, snippet=4, crops=1, batch=BATCH)
    plain = clip_features.video_features(encoder, frames, snippet=4, crops=1, batch=BATCH)
    assert fused.shape == (1, 6, 2 * E)
    np.testing.assert_allclose(fused[..., :E], plain, atol=1e-6)
    object_norm = np.abs(fused[0, :, E:]).max(axis=1)
    snippet_has_box = with_box.reshape(6, 4).any(axis=1)
    assert (object_norm[~snippet_has_box] == 0).all()
    assert (object_norm[snippet_has_box] > 0.1).all()


def test_mot_boxes_fuse_the_maximum_of_their_crops_embeddings(encoder, tmp_path):
    frames = random_frames(4, 5, 40, 50)
    (tmp_path / "v.txt").write_text("2,-1,5,6,20,10,1\n2,-1,30,2,15,30,1\n4,-1,10,10,8,8,1\n")
    boxes = clip_features.video_boxes(f"mot:{tmp_path}", "v", frames)
    fused = clip_features.video_features(encoder, frames, boxes, snippet=1, crops=10, batch=BATCH)
    assert fused.shape == (10, 5, 2 * E)
    for t in (0, 2, 4):
        assert (fused[:, t, E:] == 0).all()
    for t in (1, 3):
        crops = clip_features.object_crops(frames[t], boxes[t], S)
        assert crops.shape == (len(boxes[t]), S, S, 3)
        expected = encoder.encode_images(crops).max(axis=0)
        flipped = encoder.encode_images(np.ascontiguousarray(crops[:, :, ::-1])).max(axis=0)
        for k in range(10):
            np.testing.assert_allclose(fused[k, t, E:], expected if k < 5 else flipped, atol=1e-5)
    # A box's square: 20×10 at (5, 6) → side 20 around its centre.
    np.testing.assert_array_equal(clip_features.object_crops(frames[1], boxes[1][:1], 20)[0],
                                  frames[1, 1:21, 5:25])  # fmt: skip


# ----------------------------------------------------------------------------- resume


def test_a_rerun_recreates_only_the_missing_file(encoder, tmp_path):
    videos = clip_features.synthetic_videos(TINY)
    chosen = settings(encoder, crops=10)
    first = clip_features.extract(encoder, videos, tmp_path, chosen, batch=BATCH)
    assert first.videos == 4
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 40
    before = {p: (p.stat().st_mtime_ns, np.load(p)) for p in files}
    removed = tmp_path / f"{videos[2].video.name}__3.npy"
    removed.unlink()
    second = clip_features.extract(encoder, videos, tmp_path, chosen, batch=BATCH)
    assert second.videos == 1
    for path, (mtime, values) in before.items():
        np.testing.assert_array_equal(np.load(path), values)
        assert (path.stat().st_mtime_ns == mtime) == (path != removed), path
    assert not list(tmp_path.glob(".*tmp*"))
    assert clip_features.extract(encoder, videos, tmp_path, chosen, batch=BATCH).videos == 0
    with pytest.raises(weak.DataError, match=r"other settings \(snippet differs\)"):
        clip_features.extract(encoder, videos, tmp_path, settings(encoder, crops=10, snippet=2))


# ----------------------------------------------------------------------------- real layouts


def run(clip_folder: Path, dataset: str, source: Path, output: Path, *extra: str) -> int:
    return features.main(
        [
            f"--clip={clip_folder}",
            f"--dataset={dataset}",
            f"--source={source}",
            f"--output={output}",
            f"--batch={BATCH}",
            *extra,
        ]
    )


def test_ucf_crime_videos_are_decoded_from_the_official_layout(clip_folder, encoder, tmp_path):
    source = tmp_path / "UCF"
    names = {
        "Anomaly-Videos/Abuse/Abuse001_x264.mp4": 7,
        "Training-Normal-Videos/Normal_Videos001_x264.mp4": 5,
        "Anomaly-Videos/Arson/Arson011_x264.mp4": 9,
    }
    for name, n in names.items():
        write_video(source / name, n, "mp4v", colour=True)
    splits = source / "Anomaly_Detection_splits"
    splits.mkdir()
    (splits / "Anomaly_Train.txt").write_text(
        "Abuse/Abuse001_x264.mp4\nTraining_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4\n"
    )
    (splits / "Anomaly_Test.txt").write_text("Arson/Arson011_x264.mp4\n")
    assert run(clip_folder, "ucf_crime", source, tmp_path / "out", "--snippet=4") == 0
    train = weak.read_features(tmp_path / "out" / "train.csv", width=E)
    assert list(train) == ["Abuse001_x264", "Normal_Videos001_x264"]
    assert [train[v].snippets for v in train] == [2, 2]
    assert "Abuse001_x264__0.npy,Abuse" in (tmp_path / "out" / "train.csv").read_text()
    test = weak.read_features(tmp_path / "out" / "test.csv", width=E)
    frames = read_frames(source / "Anomaly-Videos/Arson/Arson011_x264.mp4")
    expected = clip_features.video_features(encoder, frames, snippet=4, batch=BATCH)
    np.testing.assert_allclose(test["Arson011_x264"].load(), expected, atol=1e-6)


def test_xd_violence_and_shanghaitech_layouts(clip_folder, tmp_path):
    xd = tmp_path / "XD"
    write_video(xd / "train" / "part1" / "A.Movie__#1_label_A.mp4", 5, "mp4v", colour=True)
    write_video(xd / "test" / "Fight.Film__#2_label_B1-0-0.mp4", 6, "mp4v", colour=True)
    assert run(clip_folder, "xd_violence", xd, tmp_path / "xd_out", "--snippet=4") == 0
    test_list = (tmp_path / "xd_out" / "test.csv").read_text()
    assert "Fight.Film__#2_label_B1-0-0__0.npy,fighting" in test_list
    assert (
        weak.read_features(tmp_path / "xd_out" / "train.csv", width=E)[
            "A.Movie__#1_label_A"
        ].snippets
        == 2
    )

    sht = tmp_path / "SHT"
    write_shanghaitech(sht)  # training/videos/01_001.avi; test frame folders 01_0014, 01_0015
    (sht / "shanghai-i3d-train-10crop.list").write_text("01_001\n01_0015\n")
    (sht / "shanghai-i3d-test-10crop.list").write_text("01_0014\n")
    assert run(clip_folder, "shanghaitech", sht, tmp_path / "sht_out", "--crops=10") == 0
    train = weak.read_features(tmp_path / "sht_out" / "train.csv", width=E)
    assert {v: (f.crops, f.snippets) for v, f in train.items()} == {
        "01_001": (10, 1),
        "01_0015": (10, 1),
    }
    assert "01_0015__9.npy,anomaly" in (tmp_path / "sht_out" / "train.csv").read_text()


# ----------------------------------------------------------------------------- errors


def one_line_error(capsys, code: int, pattern: str) -> None:
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(pattern, err), err


def test_bad_clip_folders_and_sources_are_one_line(clip_folder, tmp_path, capsys):
    output = str(tmp_path / "out")
    base = ["--dataset=synthetic_weak", f"--output={output}"]
    one_line_error(capsys, features.main([f"--clip={tmp_path}/nowhere", *base]), "no such folder")
    bare = Path(shutil.copytree(clip_folder, tmp_path / "bare"))
    (bare / "model.safetensors").unlink()
    one_line_error(capsys, features.main([f"--clip={bare}", *base]), r"no model\.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, run(clip_folder, "ucf_crime", empty, tmp_path / "o"),
                   r"Anomaly_Train\.txt not found")  # fmt: skip
    one_line_error(capsys, run(clip_folder, "xd_violence", empty, tmp_path / "o"),
                   r"train: folder not found")  # fmt: skip
    one_line_error(capsys, run(clip_folder, "shanghaitech", tmp_path / "none", tmp_path / "o"),
                   r"source folder not found")  # fmt: skip
    (empty / "Anomaly_Train.txt").write_text("Abuse/Abuse001_x264.mp4\n")
    (empty / "Anomaly_Test.txt").write_text("Arson/Arson011_x264.mp4\n")
    one_line_error(capsys, run(clip_folder, "ucf_crime", empty, tmp_path / "o"),
                   r"listed train videos not found: \['Abuse001_x264'\]")  # fmt: skip


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--dataset=kinetics", "invalid choice: 'kinetics'"),
        ("--crops=5", "invalid choice: 5"),
        ("--snippet=0", "--snippet must be at least 1"),
        ("--objects=detr", "--objects must be auto, mot:DIR or none"),
    ],
)
def test_bad_flags_exit_with_usage(clip_folder, tmp_path, capsys, flag, message):
    args = [f"--clip={clip_folder}", "--dataset=synthetic_weak", f"--output={tmp_path}", flag]
    with pytest.raises(SystemExit) as exit_info:
        features.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_real_datasets_need_a_source(clip_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        features.main([f"--clip={clip_folder}", "--dataset=ucf_crime", f"--output={tmp_path}"])
    assert "--source is required" in capsys.readouterr().err


def test_settings_reject_bad_values(encoder):
    with pytest.raises(ValueError, match="--crops must be 1 or 10"):
        settings(encoder, crops=3)
    with pytest.raises(ValueError, match="--snippet must be at least 1"):
        settings(encoder, snippet=0)
