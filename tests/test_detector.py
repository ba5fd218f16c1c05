"""A trained workdir is a self-contained detector (`jaxvad.detector`): loading it, what
overrides may change, old runs without normal statistics, and `jaxvad.explain` on a copied
workdir whose data root is empty (nothing is prepared there)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import copy_run, run_module

from jaxvad import detector, scoring
from jaxvad.checkpoint import NORMAL_ERRORS, CheckpointMismatchError, Checkpoints
from jaxvad.data import synthetic
from jaxvad.explain import command

pytestmark = pytest.mark.slow


def stored_errors(workdir: Path, step: int) -> dict[str, np.ndarray]:
    checkpoints = Checkpoints(workdir)
    try:
        arrays = checkpoints.normal_errors(step)
    finally:
        checkpoints.close()
    assert arrays is not None
    return arrays


def test_load_reads_the_run_from_the_workdir_alone(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "run")
    found = detector.load(workdir)
    assert found.step == 6  # The latest of the checkpoints at 3 and 6.
    assert found.config.to_dict() == tiny_run.config.to_dict()
    assert found.config.is_locked
    stored = stored_errors(workdir, 6)
    np.testing.assert_array_equal(found.normal.rgb, stored["rgb"])
    np.testing.assert_array_equal(found.normal.scored, stored["scored"].astype(bool))
    # The threshold: the 0.99 quantile of the training frames' z-scored sum.
    scored = stored["scored"].astype(bool)
    z = sum(
        (stored[c][scored] - stored[c][scored].mean()) / stored[c][scored].std()
        for c in ("rgb", "flow")
    )
    assert found.threshold == pytest.approx(np.quantile(z, 0.99), rel=1e-12)
    assert found.settings == scoring.ScoreSettings(**tiny_run.config.score)

    # Run-time settings may change; the threshold follows the score settings.
    half = detector.load(workdir, {"score.threshold_quantile": 0.5, "eval.batch_size": 4})
    assert half.threshold == pytest.approx(np.quantile(z, 0.5), rel=1e-12)
    assert half.config.eval.batch_size == half.scorer.batch_size == 4


def test_overrides_that_change_the_trained_model_or_data_are_refused(tiny_run):
    with pytest.raises(
        detector.DatasetMismatchError, match=r"data\.size: 32 in the checkpoint, 48 now"
    ):
        detector.load(tiny_run.workdir, {"data.size": 48})
    with pytest.raises(detector.DatasetMismatchError, match=r"history: 4 in the checkpoint, 2 now"):
        detector.load(tiny_run.workdir, {"history": 2})
    with pytest.raises(
        CheckpointMismatchError, match=r"model\.width: 32 in the checkpoint, 48 now"
    ):
        detector.load(tiny_run.workdir, {"model.width": 48})
    with pytest.raises(
        CheckpointMismatchError, match="holds a 'predictor' model, the config a 'mdsf'"
    ):
        detector.load(tiny_run.workdir, {"model.name": "mdsf"})
    with pytest.raises(detector.NoCheckpointError, match="no checkpoints/ folder"):
        detector.load(tiny_run.workdir / "nothing")


def test_an_old_run_gets_its_normal_statistics_once(tiny_run, tmp_path):
    """A checkpoint without normal statistics: with no prepared dataset the error gives the
    commands that add them; with it, loading scores the training split and stores them."""
    workdir = copy_run(tiny_run, tmp_path / "run")
    expected = stored_errors(workdir, 6)
    shutil.rmtree(workdir / "checkpoints" / "6" / NORMAL_ERRORS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(detector.MissingNormalStatisticsError) as error:
        detector.load(workdir, {"data.root": str(empty)})
    message = str(error.value)
    assert "holds no normal statistics" in message and "\n" not in message
    assert f"python -m jaxvad.data_prep --dataset=synthetic --output={empty} --size=32" in message
    assert f"python -m jaxvad.evaluate --config=CONFIG --workdir={workdir}" in message
    assert list(empty.iterdir()) == []

    found = detector.load(workdir)  # The run's own data root, where the dataset is prepared.
    assert (workdir / "checkpoints" / "6" / NORMAL_ERRORS).is_dir()
    again = stored_errors(workdir, 6)
    assert again.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(again[key], expected[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(found.normal.flow, expected["flow"], rtol=1e-6)


def write_video(path: Path) -> int:
    """Test clip 1 of the tiny synthetic scene as an mp4 file; returns its frame count."""
    frames, _, _ = synthetic.generate_clip(synthetic.TINY, "test", 0)
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, frames.shape[:0:-1], False
    )
    for frame in frames:
        writer.write(frame)
    writer.release()
    return len(frames)


@pytest.fixture(scope="module")
def copied(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny run's workdir copied elsewhere, an empty data root, and a video file."""
    base = tmp_path_factory.mktemp("copied")
    (base / "empty").mkdir()
    frames = write_video(base / "clip.mp4")
    return {
        "workdir": copy_run(tiny_run, base / "run"),
        "root": base / "empty",
        "video": base / "clip.mp4",
        "frames": frames,
    }


def flags(copied: dict[str, Path]) -> list[str]:
    return [
        "--config=configs/synthetic.py:tiny",
        f"--workdir={copied['workdir']}",
        f"--config.data.root={copied['root']}",
    ]


def test_a_copied_workdir_explains_a_video_without_any_dataset(copied):
    result = run_module("jaxvad.explain", *flags(copied), f"--video={copied['video']}", "--top=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(copied["root"].iterdir()) == [], "nothing may be prepared under the data root"
    out = copied["workdir"] / "explain" / "clip"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == copied["frames"] and summary["checkpoint_step"] == 6
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == min(2, summary["anomalies"])
    assert all(tuple(r) == command.RECORD_FIELDS for r in records)
    assert (out / "report.html").is_file()


def test_a_copied_workdir_names_the_dataset_a_split_needs(copied):
    result = run_module("jaxvad.explain", *flags(copied), "--split=test")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert "the synthetic dataset is not prepared" in errors[0] and "--split=test" in errors[0]
    command_line = (
        f"python -m jaxvad.data_prep --dataset=synthetic --output={copied['root']} --size=32 "
        "--flow=farneback --synthetic=tiny --seed=0"
    )
    assert errors[0].endswith(command_line)
    assert list(copied["root"].iterdir()) == []
    assert not (copied["workdir"] / "explain" / "test").exists()
