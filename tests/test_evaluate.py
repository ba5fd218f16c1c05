"""End-to-end tests of `jaxvad.evaluate` on the shared tiny run of labeled Ped2-like data
(`labeled_run`, conftest.py)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import labeled_config, run_module
from sklearn.metrics import roc_auc_score

from jaxvad import evaluate as evaluate_lib
from jaxvad.checkpoint import Checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(labeled_run) -> tuple[Path, dict]:
    """The shared tiny run (checkpoints at 3 and 6), evaluated."""
    return labeled_run.workdir, evaluate_lib.evaluate(labeled_run.config, labeled_run.workdir)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == evaluate_lib.CSV_COLUMNS
        return list(reader)


def test_outputs_and_protocol(run):
    workdir, result = run
    out = workdir / "eval"
    written = json.loads((out / "metrics.json").read_text())
    assert written["frame"]["auc_micro"] == result["frame"]["auc_micro"]
    protocol = written["protocol"]
    assert written["checkpoint_step"] == 6  # The latest of the checkpoints 3 and 6.
    assert written["dataset"] == "ped2"
    assert protocol["score"]["variant"] == "error"
    assert protocol["score"]["alpha"] == 1.0
    assert protocol["score"]["normalisation_name"] == "train"
    assert protocol["score"]["smoothing"] == "none"
    assert protocol["label_version"] == "official"
    assert "first T=4 frames" in protocol["unscored_frames"]
    for key in ("auc_micro", "auc_macro", "pr_auc", "eer", "at_training_threshold", "oracle"):
        assert key in written["frame"]
    for key in ("auc", "ap", "rbdc", "tbdc"):
        assert 0.0 <= written["pixel"][key] <= 1.0
    assert {(r["variant"], r["normalisation"]) for r in written["variants"]} == {
        (v, n) for v in ("error", "psnr") for n in ("train", "minmax", "none")
    }
    assert sum(r["configured"] for r in written["variants"]) == 1
    plots = [out / p for p in written["plots"]]
    assert {p.name for p in plots} >= {"roc.png", "pr.png", "histogram.png"}
    assert len(list((out / "plots" / "scores").glob("*.png"))) == protocol["videos"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_micro_auc_recomputed_from_the_csv(run):
    workdir, result = run
    rows = read_csv(workdir / "eval" / "frame_scores.csv")
    assert len(rows) == result["protocol"]["frames"]
    scored = [r for r in rows if r["scored"] == "1"]
    assert len(scored) == result["protocol"]["frames_scored"]
    # Unscored frames are the first T = 4 of each video, with empty scores.
    unscored = [r for r in rows if r["scored"] == "0"]
    assert {int(r["frame"]) for r in unscored} == {1, 2, 3, 4}
    assert all(r["score"] == "" for r in unscored)
    labels = [int(r["label"]) for r in scored]
    scores = [float(r["score"]) for r in scored]
    assert abs(roc_auc_score(labels, scores) - result["frame"]["auc_micro"]) <= 1e-9
    for r in scored:
        total = float(r["score_rgb"]) + 1.0 * float(r["score_flow"])
        assert float(r["score"]) == pytest.approx(total, rel=1e-12, abs=1e-12)


def test_threshold_comes_from_the_stored_training_errors(run):
    workdir, result = run
    checkpoints = Checkpoints(workdir)
    stored = checkpoints.normal_errors(6)
    checkpoints.close()
    assert stored is not None, "train stores the training split's errors with its last step"
    scored = stored["scored"].astype(bool)
    z = (stored["rgb"][scored] - stored["rgb"][scored].mean()) / stored["rgb"][scored].std()
    z += (stored["flow"][scored] - stored["flow"][scored].mean()) / stored["flow"][scored].std()
    expected = np.quantile(z, 0.99)
    assert result["protocol"]["threshold"]["value"] == pytest.approx(expected, rel=1e-9)
    assert result["frame"]["at_training_threshold"]["threshold"] == pytest.approx(expected)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("jaxvad.evaluate", *args)


def test_bad_input_is_one_clear_line(run, labeled_data, tmp_path):
    workdir, _ = run
    config = "--config=configs/synthetic.py:tiny"
    root = f"--config.data.root={labeled_data['labeled']}"
    dataset = "--config.data.dataset=ped2"

    empty = run_cli(config, root, dataset, f"--workdir={tmp_path}")
    assert empty.returncode == 1, empty.stderr
    assert "no checkpoints/ folder" in empty.stderr and "Traceback" not in empty.stderr

    other_data = run_cli(config, root, dataset, f"--workdir={workdir}", "--config.data.size=48")
    assert other_data.returncode == 1, other_data.stderr
    assert "data.size: 32 in the checkpoint, 48 now" in other_data.stderr
    assert "Traceback" not in other_data.stderr

    other_model = run_cli(config, root, dataset, f"--workdir={workdir}", "--config.model.width=48")
    assert other_model.returncode == 1, other_model.stderr
    assert "model.width: 32 in the checkpoint, 48 now" in other_model.stderr


def test_unlabeled_test_split_is_scored_without_metrics(run, labeled_data, tmp_path):
    # The same checkpoint (same data settings, same training split) on the unlabeled copy.
    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    result = evaluate_lib.evaluate(labeled_config(labeled_data["unlabeled"]), workdir)
    assert "no frame labels" in result["metrics_skipped"]
    assert "frame" not in result and "pixel" not in result
    rows = read_csv(workdir / "eval" / "frame_scores.csv")
    assert all(r["label"] == "" for r in rows)
    assert all(r["score"] != "" for r in rows if r["scored"] == "1")
    # The stored training errors are reused, so the scores are the labeled run's (up to float
    # rounding, ~1e-6: that run's jitted step also returned pixel maps, another XLA program).
    labeled = read_csv(run[0] / "eval" / "frame_scores.csv")
    assert [r["scored"] for r in rows] == [r["scored"] for r in labeled]
    np.testing.assert_allclose(
        [float(r["score"]) for r in rows if r["scored"] == "1"],
        [float(r["score"]) for r in labeled if r["scored"] == "1"],
        atol=1e-4,
    )
    written = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert written["metrics_skipped"] == result["metrics_skipped"]
