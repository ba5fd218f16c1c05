"""Bad input through the real command line (`jaxvad.data_prep`): every case must fail with a
message that names the offending file or folder and leave no complete-looking dataset behind.
Also: a successful synthetic run, its re-run (nothing recomputed), and a run killed mid-way
(no dataset left; the next run completes and reuses the cached videos)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from jaxvad import data_prep
from jaxvad.data import preprocess, synthetic

REPO = Path(__file__).resolve().parents[1]
FAST = ["--size=32", "--workers=1"]


def prep(capsys, dataset: str, source: Path | None, output: Path, *extra: str):
    """Runs `data_prep.main` in-process; returns (exit code, stdout, stderr)."""
    argv = [f"--dataset={dataset}", f"--output={output}", *FAST, *extra]
    if source is not None:
        argv.append(f"--source={source}")
    code = data_prep.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_dataset(output: Path, dataset: str, config: str) -> None:
    """Nothing under `output` looks like a complete dataset."""
    version = output / dataset / config / "1.0.0"
    assert not (version / "dataset_info.json").exists()
    assert not list(output.rglob("dataset_info.json"))
    with pytest.raises(OSError, match=r"dataset_info\.json"):  # tfds' DatasetInfoFileError
        tfds.builder_from_directory(str(version))


def assert_fails(capsys, dataset, source, output, offender: Path, *extra, config="32_farneback"):
    code, _, err = prep(capsys, dataset, source, output, *extra)
    assert code != 0
    assert str(offender) in err, err
    assert "Traceback" not in err
    assert_no_dataset(output, dataset, config)
    return err


def garbage(path: Path, size: int = 600) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """The synthetic TINY preset in Ped2's official layout (written once, copied per test)."""
    return synthetic.write_ped2_layout(tmp_path_factory.mktemp("tiny") / "ped2", synthetic.TINY)


@pytest.fixture
def ped2_src(tmp_path, tiny_source) -> Path:
    return Path(shutil.copytree(tiny_source, tmp_path / "src"))


def set_m_lines(source: Path, entries: list[str]) -> Path:
    m_file = source / "Test" / "UCSDped2.m"
    lines = ["TestVideoFile = {};"] + [f"TestVideoFile{{end+1}}.gt_frame = [{e}];" for e in entries]
    m_file.write_text("\n".join(lines) + "\n")
    return m_file


# ----------------------------------------------------------------------------- Ped2 (official)


def test_missing_source_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert_fails(capsys, "ped2", missing, tmp_path / "out", missing)


def test_missing_test_folder(ped2_src, tmp_path, capsys):
    shutil.rmtree(ped2_src / "Test")
    assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", ped2_src / "Test")


def test_clip_folder_without_frames(ped2_src, tmp_path, capsys):
    clip = ped2_src / "Train" / "Train002"
    for frame in clip.iterdir():
        frame.unlink()
    err = assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", clip)
    assert "no frames" in err


@pytest.mark.parametrize("damage", [garbage, cut_in_half], ids=["garbage", "truncated"])
def test_unreadable_image(ped2_src, tmp_path, capsys, damage):
    image = ped2_src / "Test" / "Test002" / "005.tif"
    damage(image)
    assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", image)


def test_error_in_worker_process_propagates(ped2_src, tmp_path, capsys):
    image = ped2_src / "Train" / "Train001" / "003.tif"
    garbage(image)
    assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", image, "--workers=2")


def test_mask_count_differs_from_frame_count(ped2_src, tmp_path, capsys):
    gt = ped2_src / "Test" / "Test001_gt"
    sorted(gt.iterdir())[-1].unlink()
    err = assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", gt)
    assert re.search(r"\d+ masks for \d+ frames", err)


def test_frames_of_different_sizes(ped2_src, tmp_path, capsys):
    clip = ped2_src / "Train" / "Train002"
    image = clip / "003.tif"
    cv2.imwrite(str(image), cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)[:40, :60])
    err = assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", clip)
    assert "different sizes" in err


@pytest.mark.parametrize(
    "entries",
    [["1:5", "2:3, 4:"], ["1:5", "x"], ["1:5", "9:2"]],
    ids=["bad_range", "text", "reversed"],
)
def test_malformed_m_file(ped2_src, tmp_path, capsys, entries):
    m_file = set_m_lines(ped2_src, entries)
    assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", m_file)


def test_m_file_with_bad_syntax(ped2_src, tmp_path, capsys):
    m_file = ped2_src / "Test" / "UCSDped2.m"
    m_file.write_text("TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [1:5;\n")
    assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", m_file)


def test_m_range_past_clip_length(ped2_src, tmp_path, capsys):
    m_file = set_m_lines(ped2_src, ["1:5", "3:999"])
    err = assert_fails(capsys, "ped2", ped2_src, tmp_path / "out", m_file)
    assert "Test002" in err and "runs past" in err


def test_error_exit_code_and_stderr_from_subprocess(ped2_src, tmp_path):
    image = ped2_src / "Test" / "Test001" / "002.tif"
    garbage(image)
    output = tmp_path / "out"
    argv = ["--dataset=ped2", f"--source={ped2_src}", f"--output={output}", *FAST]
    result = subprocess.run(
        [sys.executable, "-m", "jaxvad.data_prep", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"error: {image}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_dataset(output, "ped2", "32_farneback")


# ----------------------------------------------------------------------------- Ped2 (repackaged)


@pytest.fixture
def ped2_videos_src(tmp_path, vad_writers) -> Path:
    return vad_writers.ped2(tmp_path / "src", [[(2, 3)]], lengths=(6,), train=(4,), repackaged=True)


@pytest.mark.parametrize("damage", [cut_in_half, garbage], ids=["truncated", "random_bytes"])
@pytest.mark.parametrize("clip", ["Train/Train001.mp4", "Test/Test001.mp4"])
def test_unreadable_video(ped2_videos_src, tmp_path, capsys, damage, clip):
    video = ped2_videos_src / clip
    damage(video)
    assert_fails(capsys, "ped2", ped2_videos_src, tmp_path / "out", video)


# ----------------------------------------------------------------------------- Avenue


@pytest.fixture
def avenue_src(tmp_path, vad_writers) -> Path:
    source = tmp_path / "src"
    vad_writers.avenue(source, lengths=(5, 11), train=(4,))
    return source


def test_avenue_truncated_avi(avenue_src, tmp_path, capsys):
    video = avenue_src / "testing_videos" / "02.avi"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 4 // 5])  # opens, but ends before its header's count
    assert_fails(capsys, "avenue", avenue_src, tmp_path / "out", video, config="32_farneback_mask")


def test_avenue_garbage_mat(avenue_src, tmp_path, capsys):
    mat = avenue_src / "testing_label_mask" / "1_label.mat"
    garbage(mat)
    assert_fails(capsys, "avenue", avenue_src, tmp_path / "out", mat, config="32_farneback_mask")


def test_avenue_mat_without_vollabel(avenue_src, tmp_path, capsys):
    mat = avenue_src / "testing_label_mask" / "2_label.mat"
    scipy.io.savemat(mat, {"gt": np.zeros((3, 3))})
    err = assert_fails(
        capsys, "avenue", avenue_src, tmp_path / "out", mat, config="32_farneback_mask"
    )
    assert "volLabel" in err


def test_avenue_mat_with_wrong_mask_count(avenue_src, tmp_path, capsys):
    mat = avenue_src / "testing_label_mask" / "1_label.mat"
    cells = np.empty((1, 4), dtype=object)  # the video has 5 frames
    for k in range(4):
        cells[0, k] = np.zeros((24, 32), np.uint8)
    scipy.io.savemat(mat, {"volLabel": cells})
    assert_fails(capsys, "avenue", avenue_src, tmp_path / "out", mat, config="32_farneback_mask")


def _too_short(path: Path) -> None:
    np.save(path, np.zeros((1, 15), np.int8))


def _too_long(path: Path) -> None:
    np.save(path, np.zeros((1, 17), np.int8))


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_too_short, "holds 15 frame labels"), (_too_long, "holds 17 frame labels"), (garbage, "")],
    ids=["short", "long", "garbage"],
)
def test_avenue_bad_interval_file(avenue_src, tmp_path, capsys, damage, message):
    labels = avenue_src / "frame_labels_avenue.npy"  # the videos hold 5 + 11 = 16 frames
    damage(labels)
    err = assert_fails(
        capsys,
        "avenue",
        avenue_src,
        tmp_path / "out",
        labels,
        "--label_version=interval",
        config="32_farneback_interval",
    )
    assert message in err


# ----------------------------------------------------------------------------- ShanghaiTech


@pytest.fixture
def sht_src(tmp_path, vad_writers) -> Path:
    source = tmp_path / "src"
    vad_writers.shanghaitech(source)
    return source


@pytest.mark.parametrize("damage", [garbage, cut_in_half], ids=["garbage", "truncated"])
@pytest.mark.parametrize("folder", ["test_frame_mask", "test_pixel_mask"])
def test_shanghaitech_malformed_npy(sht_src, tmp_path, capsys, damage, folder):
    npy = sht_src / folder / "01_0015.npy"
    damage(npy)
    assert_fails(capsys, "shanghaitech", sht_src, tmp_path / "out", npy)


def test_shanghaitech_frame_mask_of_wrong_length(sht_src, tmp_path, capsys):
    npy = sht_src / "test_frame_mask" / "01_0014.npy"  # the clip has 5 frames
    np.save(npy, np.zeros(6, np.int8))
    err = assert_fails(capsys, "shanghaitech", sht_src, tmp_path / "out", npy)
    assert "6 frame labels for 01_0014" in err


@pytest.mark.parametrize("damage", [garbage, cut_in_half], ids=["garbage", "truncated"])
def test_shanghaitech_unreadable_jpeg(sht_src, tmp_path, capsys, damage):
    image = sht_src / "testing" / "frames" / "01_0015" / "002.jpg"
    damage(image)
    assert_fails(capsys, "shanghaitech", sht_src, tmp_path / "out", image)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value"), [("--dataset", "ucsd_ped3"), ("--flow", "lucas_kanade")]
)
def test_unknown_choice_exits_2(tmp_path, capsys, option, value):
    argv = ["--dataset=ped2", f"--source={tmp_path}", f"--output={tmp_path / 'out'}", *FAST]
    with pytest.raises(SystemExit) as exit_info:
        data_prep.main([*argv, f"{option}={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and value in err
    assert not (tmp_path / "out").exists()


def test_tvl1_without_opencv_contrib(tmp_path, capsys, ped2_src, monkeypatch):
    monkeypatch.delattr(cv2, "optflow", raising=False)  # as with opencv-python-headless
    code, _, err = prep(capsys, "ped2", ped2_src, tmp_path / "out", "--flow=tvl1")
    assert code == 2
    assert "opencv-contrib-python-headless" in err
    assert_no_dataset(tmp_path / "out", "ped2", "32_tvl1")


# ----------------------------------------------------------------------------- complete runs

TINY_ARGS = ["--dataset=synthetic", "--synthetic=tiny", *FAST]
TINY_CONFIG = "32_farneback_tiny_seed0"


def parse_summary(stdout: str) -> dict[str, dict[str, int]]:
    """The per-split table `data_prep` prints → {split: {num_videos, num_frames, ...}}."""
    rows = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(train|test)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)", line.strip())
        if match:
            values = [int(v.replace(",", "")) for v in match.groups()[1:]]
            keys = ("num_videos", "num_frames", "num_anomalous_frames")
            rows[match.group(1)] = dict(zip(keys, values, strict=True))
    return rows


def expected_tiny_summary() -> dict[str, dict[str, int]]:
    summary = {}
    for split in synthetic.SPLITS:
        clips = [synthetic.plan_clip(synthetic.TINY, split, c) for c in range(2)]
        labels = [synthetic.render_clip(synthetic.TINY, p)[1] for p in clips]
        summary[split] = {
            "num_videos": 2,
            "num_frames": sum(p.n_frames for p in clips),
            "num_anomalous_frames": sum(
                0 if m is None else int(m.any(axis=(1, 2)).sum()) for m in labels
            ),
        }
    return summary


def test_synthetic_run_then_rerun_skips_work(tmp_path, capsys, monkeypatch):
    output = tmp_path / "out"
    code, out, err = prep(capsys, "synthetic", None, output, "--synthetic=tiny")
    assert code == 0, err
    dataset_dir = output / "synthetic" / TINY_CONFIG / "1.0.0"
    assert f"prepared at {dataset_dir}" in out
    printed = parse_summary(out)
    metadata = json.loads((dataset_dir / "metadata.json").read_text())
    from_metadata = {
        split: {k: info[k] for k in ("num_videos", "num_frames", "num_anomalous_frames")}
        for split, info in metadata["splits"].items()
    }
    assert printed == from_metadata == expected_tiny_summary()
    builder = tfds.builder_from_directory(str(dataset_dir))
    for split, counts in printed.items():
        assert builder.info.splits[split].num_examples == counts["num_frames"]
    assert not (output / "synthetic" / TINY_CONFIG / "cache").exists()  # removed once complete

    def recompute(*args, **kwargs):
        raise AssertionError("a complete dataset must not be recomputed")

    monkeypatch.setattr(preprocess, "prepare_video", recompute)
    monkeypatch.setattr(synthetic, "write_ped2_layout", recompute)
    code, again, err = prep(capsys, "synthetic", None, output, "--synthetic=tiny")
    assert code == 0, err
    assert parse_summary(again) == printed


KILLABLE_RUN = textwrap.dedent(
    """
    import sys, time
    from jaxvad.data import preprocess
    from jaxvad import data_prep

    original, calls = preprocess.prepare_video, []

    def stall_after_first(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            time.sleep(600)  # killed here, with one video in the cache
        return original(*args, **kwargs)

    preprocess.prepare_video = stall_after_first
    sys.exit(data_prep.main(sys.argv[1:]))
    """
)


def test_killed_run_leaves_no_dataset_and_next_run_reuses_cache(tmp_path, capsys, monkeypatch):
    output = tmp_path / "out"
    config_dir = output / "synthetic" / TINY_CONFIG
    cache = config_dir / "cache"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_RUN, *TINY_ARGS, f"--output={output}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not [p for p in cache.glob("*.npz") if ".tmp" not in p.name]:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no cached video after 90 s"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    cached = sorted(p.name for p in cache.glob("*.npz"))
    assert cached == ["train-Train001.npz"]
    assert list(config_dir.glob("incomplete.*"))  # TFDS's working folder, left by the kill
    assert_no_dataset(output, "synthetic", TINY_CONFIG)

    original, calls = preprocess.prepare_video, []

    def counting(spec, **kwargs):
        calls.append(spec.name)
        return original(spec, **kwargs)

    monkeypatch.setattr(preprocess, "prepare_video", counting)
    code, out, err = prep(capsys, "synthetic", None, output, "--synthetic=tiny")
    assert code == 0, err
    assert calls == ["Train002", "Test001", "Test002"]  # Train001 came from the cache
    assert parse_summary(out) == expected_tiny_summary()
    assert (config_dir / "1.0.0" / "dataset_info.json").is_file()
    assert not list(config_dir.glob("incomplete.*"))
    tfds.builder_from_directory(str(config_dir / "1.0.0"))
