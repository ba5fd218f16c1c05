"""The `aadc` model (AADC-Net) under the one trainer, on the weakly labelled synthetic set with
features from a tiny random CLIP (`weak_run`, trained once per session)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import load_config, run_module
from flax import nnx
from sklearn.metrics import roc_auc_score

from jaxvad import config as config_lib
from jaxvad import detector, distributed, evaluate, model, weak_scoring
from jaxvad import train as train_lib
from jaxvad.checkpoint import SELECTION_METRIC, CheckpointMismatchError, Checkpoints
from jaxvad.data import weak, weak_input
from jaxvad.data.video_io import DataError
from jaxvad.explain import command as explain_command
from jaxvad.metric_writer import read_jsonl
from jaxvad.model.aadc import prompt_layout
from jaxvad.vlm.clip.random_folder import write_random_clip


def stored_state(workdir, step):
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def test_prompt_layout_puts_the_name_between_the_context_tokens():
    ids, slots, eos = prompt_layout([(50, 7, 8, 51), (50, 9, 51)], context=4, length=10)
    np.testing.assert_array_equal(ids[0], [50, 0, 0, 7, 8, 0, 0, 51, 0, 0])
    np.testing.assert_array_equal(slots[0], [-1, 0, 1, -1, -1, 2, 3, -1, -1, -1])
    np.testing.assert_array_equal(eos, [7, 6])
    with pytest.raises(ValueError, match=r"config\.model\.context"):
        prompt_layout([(50, *range(7), 51)], context=4, length=10)


def test_fixed_length_averages_longer_videos_and_pads_shorter_ones():
    features = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    out, length = weak_input.fixed_length(features, 4)  # bounds 0, 2, 5, 7, 10
    np.testing.assert_allclose(out[:, 0], [0.5, 3.0, 5.5, 8.0])
    assert length == 4
    out, length = weak_input.fixed_length(features[:3], 5)
    np.testing.assert_allclose(out[:, 0], [0, 1, 2, 0, 0])
    assert length == 3
    chunks, lengths = weak_input.test_chunks(features, 4)
    assert chunks.shape == (3, 4, 2) and lengths.tolist() == [4, 4, 2]


def test_the_zero_initialised_head_scores_every_snippet_at_chance(weak_run):
    assert load_config("synthetic_weak").model.head_zeroinit  # The default.
    config = weak_run.config.copy_and_resolve_references()  # The fixture keeps a random head.
    config.model.head_zeroinit = True
    zero_head = model.make_model(config, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, zero_head.width))
    length = jnp.array([8, 3])
    scores = zero_head.forward(x, length)["scores"]
    np.testing.assert_array_equal(scores[0], 0.5)
    np.testing.assert_array_equal(scores[1], [0.5] * 3 + [0.0] * 5)
    random_head = model.make_model(weak_run.config, rngs=nnx.Rngs(0))
    assert float(jnp.std(random_head.forward(x, length)["scores"][0])) > 0.01


def test_padded_snippets_change_nothing(weak_run):
    config = weak_run.config  # A random score head: scores that vary with the features.
    aadc = model.make_model(config, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, aadc.width))
    length = jnp.array([8, 3])
    out = aadc.forward(x, length)
    again = aadc.forward(x.at[1, 3:].set(50.0), length)
    for key in ("scores", "class_logits"):
        np.testing.assert_allclose(out[key], again[key], atol=1e-6)
    assert out["similarity"].shape == (2, 8, len(weak_input.CLASSES["synthetic_weak"]))
    assert float(out["scores"][1, 3:].max()) == 0.0


def test_training_logs_both_terms_and_leaves_the_clip_text_tower_unchanged(weak_run):
    records = read_jsonl(weak_run.workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(np.isfinite(r["loss_bce"]) and np.isfinite(r["loss_nce"]) for r in records)
    first, last = (stored_state(weak_run.workdir, s)["params"]["classes"] for s in (3, 6))
    jax.tree.map(np.testing.assert_array_equal, first["text_tower"], last["text_tower"])
    assert not np.array_equal(first["context"]["value"], last["context"]["value"])
    initial = nnx.state(model.make_model(weak_run.config, rngs=nnx.Rngs(0)), nnx.Param)
    np.testing.assert_array_equal(
        initial["classes"]["text_tower"]["final_norm"]["scale"][...],
        last["text_tower"]["final_norm"]["scale"]["value"],
    )


def test_a_run_resumed_from_its_middle_checkpoint_ends_identical(weak_run, tmp_path):
    """weak_run's workdir without its step-6 checkpoint (a run stopped after step 3's) resumes
    at step 3: the same batches (the data iterator is restored), the same losses and final
    parameters, bit for bit."""
    workdir = shutil.copytree(weak_run.workdir, tmp_path / "run")
    shutil.rmtree(workdir / "checkpoints" / "6")
    train_lib.train(weak_run.config, workdir)
    expected = {r["step"]: r["loss"] for r in read_jsonl(weak_run.workdir / "metrics.jsonl")}
    resumed = list(read_jsonl(workdir / "metrics.jsonl"))[6:]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert all(r["loss"] == expected[r["step"]] for r in resumed)
    jax.tree.map(
        np.testing.assert_array_equal,
        stored_state(weak_run.workdir, 6)["params"],
        stored_state(workdir, 6)["params"],
    )


def names(split):
    return [video.name for video in split.videos]


def test_held_out_videos_are_a_seeded_share_of_each_label_left_out_of_training(weak_run):
    config = weak_run.config
    split = config_lib.weak_data(config).split("train")
    where = config_lib.weak_data(config).features
    train, held = train_lib.weak_holdout(split, 0.25, 0, where)
    labels = [v.label for v in held.videos]
    assert labels.count(0) == round(0.25 * 8) and labels.count(1) == round(0.25 * 10)
    assert sorted(names(train) + names(held)) == sorted(names(split))
    assert not set(names(train)) & set(names(held))
    assert held.features == tuple(split.features[names(split).index(n)] for n in names(held))
    assert names(train_lib.weak_holdout(split, 0.25, 0, where)[1]) == names(held)
    assert names(train_lib.weak_holdout(split, 0.25, 1, where)[1]) != names(held)
    assert train_lib.weak_holdout(split, 0.0, 0, where) == (split, None)
    one_normal = split.take([0, *range(8, 18)])  # 1 normal video: none left to train on.
    with pytest.raises(DataError, match=r"normal training videos: train\.holdout=0\.25"):
        train_lib.weak_holdout(one_normal, 0.25, 0, where)
    # What the trainer reads: the training split without them.
    inputs = train_lib.training_input(config, where)
    expected = train_lib.weak_holdout(split, config.train.holdout, config.seed, where)
    assert (names(inputs.table), names(inputs.held_out)) == tuple(map(names, expected))


def test_checkpoints_are_scored_on_the_held_out_videos_and_the_best_is_loaded(weak_run, tmp_path):
    """weak_run holds out videos: each checkpoint's video AUC on them is logged and stored, and
    evaluate loads the best step; with the stored AUCs swapped, the other step."""
    records = read_jsonl(weak_run.workdir / "metrics.jsonl")
    aucs = {r["step"]: r[SELECTION_METRIC] for r in records if SELECTION_METRIC in r}
    assert sorted(aucs) == [3, 6] and all(0 <= a <= 1 for a in aucs.values())
    best = max(aucs, key=lambda s: (aucs[s], s))
    # The logged number is the video AUC of the step's parameters on the held-out videos, a
    # video's score the top-K mean of its snippet scores.
    config = weak_run.config
    held_out = train_lib.training_input(config, config_lib.weak_data(config).features).held_out
    checkpoints = Checkpoints(weak_run.workdir)
    graphdef, params = detector.load_params(config, checkpoints, 6, distributed.setup(1))
    checkpoints.close()
    predictions = weak_scoring.predict(
        graphdef, params, held_out, snippets=config.data.snippets, batch_size=8
    )
    k = config.loss.k
    top = [np.sort(s)[-k:].mean() for s in predictions.scores]
    np.testing.assert_allclose(predictions.video_scores, top, rtol=1e-6)
    labels = [v.label for v in held_out.videos]
    assert aucs[6] == pytest.approx(roc_auc_score(labels, top), abs=1e-6)
    config = load_config("synthetic_weak", **{"data.root": str(weak_run.root)})
    assert evaluate.evaluate(config, weak_run.workdir)["checkpoint_step"] == best
    workdir = shutil.copytree(weak_run.workdir, tmp_path / "run")
    other = 3 if best == 6 else 6
    for step, auc in ((best, 0.0), (other, 1.0)):  # Orbax's metrics item of each step.
        (workdir / "checkpoints" / str(step) / "metrics" / "metrics").write_text(
            json.dumps({SELECTION_METRIC: auc})
        )
    assert evaluate.evaluate(config, workdir)["checkpoint_step"] == other


def test_a_weak_run_diverging_at_a_checkpoint_stops_with_the_non_finite_error(weak_run, tmp_path):
    """Step 7 diverges and is a checkpoint step: its held-out videos are not scored with
    non-finite parameters, the run stops as any diverging run does."""
    workdir = shutil.copytree(weak_run.workdir, tmp_path / "run")  # Checkpoints at 3 and 6.
    diverging = {"train.num_steps": 16, "train.checkpoint_every": 1, "train.holdout": 0.2}
    diverging = load_config(
        "synthetic_weak",
        **{"data.root": str(weak_run.root), "optimizer.learning_rate": 1e30, **diverging},
    )
    with pytest.raises(train_lib.NonFiniteLossError, match="last good checkpoint, step 6"):
        train_lib.train(diverging, workdir)
    assert Checkpoints(workdir).latest_step() == 6


def test_resuming_with_other_held_out_videos_is_refused(weak_run, tmp_path):
    workdir = shutil.copytree(weak_run.workdir, tmp_path / "run")  # train.holdout 0.2.
    resumed = {"data.root": str(weak_run.root), "train.num_steps": 8, "train.holdout": 0.0}
    with pytest.raises(
        CheckpointMismatchError, match=r"train\.holdout: 0\.2 in the checkpoint, 0\.0 now"
    ):
        train_lib.train(load_config("synthetic_weak", **resumed), workdir)
    assert Checkpoints(workdir).latest_step() == 6


def test_evaluate_reports_the_weak_metrics(weak_run, tmp_path):
    config = load_config("synthetic_weak", **{"data.root": str(weak_run.root)})
    result = evaluate.evaluate(config, weak_run.workdir)
    written = json.loads((weak_run.workdir / "eval" / "metrics.json").read_text())
    for key in ("frame_auc", "frame_ap", "category_accuracy", "map_average"):
        assert 0.0 <= written[key] <= 1.0 and written[key] == result[key], key
    assert list(written["map_per_iou"]) == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    assert written["checkpoint_step"] == 6


@pytest.mark.parametrize("name", ["ucf_crime", "xd_violence", "shanghaitech_weak"])
def test_each_real_dataset_config_names_what_it_needs_and_validates_once_given(name):
    """The real datasets' configs: frame-only features of 16-frame snippets, 256 long; their
    CLIP folder and features come from the command line (configs/ucf_crime.py trains and
    evaluates on the `ucf` fixture below; the tiny variants are the synthetic set's)."""
    config = load_config(name, variant=None)
    assert config.data.dataset in config_lib.WEAK_DATASETS and config.model.name == "aadc"
    assert (config.data.snippet_frames, config.data.snippets, config.data.objects) == (
        16, 256, "none"
    )  # fmt: skip
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.clip"):
        config_lib.validate(config)
    with config.unlocked():
        config.model.clip = "clip-vit-base-patch16"
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.features"):
        config_lib.validate(config)
    with config.unlocked():
        config.data.features = "features"
    config_lib.validate(config)


def test_weak_models_and_datasets_go_together():
    config = load_config("synthetic_weak", variant=None)
    assert (config.loss.k, config.model.gamma, config.loss.nce) == (5, 1.0, 1.0)
    config_lib.validate(config)
    with config.unlocked():
        config.data.dataset = "synthetic"
    with pytest.raises(config_lib.ConfigError, match="weakly labelled"):
        config_lib.validate(config)


def test_the_embedded_synthetic_features_are_the_feature_commands_output(weak_run, tmp_path):
    """The trainer's synthetic features (`weak_input.write_synthetic_features`) are the files
    `python -m jaxvad.features` writes for the same preset, CLIP and snippet length."""
    from jaxvad import features

    data = config_lib.weak_data(weak_run.config)
    output = tmp_path / "command"
    code = features.main(
        [
            f"--clip={data.clip}",
            "--dataset=synthetic_weak",
            "--synthetic=tiny",
            f"--synthetic-seed={weak_run.config.data.synthetic_seed}",
            f"--snippet={data.snippet_frames}",
            f"--objects={data.objects}",
            f"--output={output}",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in data.features.iterdir())
    assert names == sorted(p.name for p in output.iterdir())
    assert {"train.csv", "test.csv", "features.json"} <= set(names)
    for name in names:
        ours, theirs = data.features / name, output / name
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(ours), np.load(theirs))
        else:
            assert ours.read_text() == theirs.read_text(), name


# ---------------------------------------------------------------------------------------------
# Real datasets: VadCLIP-layout features (random) with the published list and label formats.


def write_features(folder, rows, *, width, seed=0):
    """`rows` {split: [(published path of the file, snippets)]} → `folder/<split>.csv`
    (VadCLIP's `path,label`, the authors' absolute paths) and the `.npy` files in per-class
    subfolders of `folder`."""
    rng = np.random.default_rng(seed)
    for split, files in rows.items():
        lines = ["path,label"]
        for path, snippets in files:
            name = path.split("/")[-1]
            (folder / split).mkdir(parents=True, exist_ok=True)
            np.save(folder / split / name, rng.standard_normal((snippets, width), np.float32))
            lines.append(f"{path},ignored")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


UCF_ROWS = {
    "train": [
        (f"/data/UCFClipFeatures/{video}__{crop}.npy", snippets)
        for video, snippets in [
            ("Abuse/Abuse001_x264", 30), ("Vandalism/Vandalism050_x264", 12),
            ("Training_Normal_Videos_Anomaly/Normal_Videos001_x264", 20),
            ("Training_Normal_Videos_Anomaly/Normal_Videos002_x264", 9),
        ]
        for crop in range(2)
    ],
    "test": [
        ("/data/UCFClipFeatures/Abuse/Abuse028_x264__0.npy", 20),
        ("/data/UCFClipFeatures/RoadAccidents/RoadAccidents001_x264__0.npy", 25),
        ("/data/UCFClipFeatures/Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264__0.npy", 12),
    ],
}  # fmt: skip
UCF_ANNOTATIONS = """\
Abuse028_x264.mp4  Abuse  165  240  -1  -1
Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1
RoadAccidents001_x264.mp4  RoadAccidents  210  300  -1  -1
"""


@pytest.fixture(scope="module")
def ucf(weak_run, tmp_path_factory):
    """UCF-Crime features in VadCLIP's layout, the official annotation file under `labels`,
    and configs/ucf_crime.py's tiny variant pointed at them (the tiny random CLIP of
    `weak_run`)."""
    root = tmp_path_factory.mktemp("ucf")
    features = write_features(root / "features", UCF_ROWS, width=32)
    (root / "labels").mkdir()
    (root / "labels" / weak_input.TEST_LABELS["ucf_crime"]).write_text(UCF_ANNOTATIONS)
    config = load_config(
        "ucf_crime",
        variant=None,  # The tiny variant is the synthetic set's.
        **{
            "data.features": str(features),
            "data.source": str(root / "labels"),
            "data.root": str(weak_run.root),
            "model.clip": str(weak_run.root / weak_input.TINY_CLIP),
            "train.batch_size": 4,
            "train.num_steps": 2,
            "train.log_every": 1,
            "train.checkpoint_every": 2,
            "eval.batch_size": 4,
        },
    )
    return types.SimpleNamespace(root=root, features=features, config=config)


def test_ucf_crime_features_train_and_evaluate_through_the_one_trainer(ucf, tmp_path):
    config_lib.validate(ucf.config)
    test = config_lib.weak_data(ucf.config).split("test")
    assert [v.name for v in test.videos] == [
        "Abuse028_x264", "RoadAccidents001_x264", "Normal_Videos_003_x264"
    ]  # fmt: skip
    assert [v.frames for v in test.videos] == [320, 400, 192]  # snippets × 16
    assert test.videos[0].segments == ((165, 240),) and test.videos[2].segments == ()
    assert test.classes[0] == "Normal" and test.features[0].crops == 1
    workdir = tmp_path / "run"
    train_lib.train(ucf.config, workdir)
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")] == [1, 2]
    result = evaluate.evaluate(ucf.config, workdir)
    assert result["dataset"] == "ucf_crime" and result["videos"] == 3
    assert 0.0 <= result["frame_auc"] <= 1.0 and 0.0 <= result["category_accuracy"] <= 1.0
    # Explained without the videos (data.source holds the labels only): no pictures, no
    # captions, and the reason says so.
    with ucf.config.unlocked():
        ucf.config.explain.alarm_score = 0.01
    out = explain_command.explain(ucf.config, workdir, split="test")
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert records and all(r["image"] is None and r["caption"] is None for r in records)
    assert all("config.data.source does not hold the dataset's videos" in r["caption_note"]
               for r in records)  # fmt: skip
    assert {r["category"] for r in records} <= set(test.classes[1:])


def test_bad_real_inputs_are_the_readers_named_errors(ucf, tmp_path):
    features = shutil.copytree(ucf.features, tmp_path / "features")
    data = dataclasses.replace(config_lib.weak_data(ucf.config), features=features)
    (features / "test" / "Abuse028_x264__0.npy").unlink()
    with pytest.raises(weak.WeakLabelError, match=r"test\.csv, line 2: feature file .*Abuse028"):
        data.split("test")
    (features / "train.csv").unlink()
    with pytest.raises(weak.WeakLabelError, match=r"train\.csv: train list not found"):
        data.split("train")
    with pytest.raises(weak.WeakLabelError, match=r"Temporal_Anomaly_Annotation.* not found"):
        dataclasses.replace(data, labels=tmp_path).split("test")


def test_a_listed_video_without_features_is_one_line_at_the_command(ucf, tmp_path):
    features = shutil.copytree(ucf.features, tmp_path / "features")
    (features / "train" / "Vandalism050_x264__1.npy").unlink()
    done = run_module(
        "jaxvad.train",
        "--config=configs/ucf_crime.py",
        f"--workdir={tmp_path / 'run'}",
        "--config.train.batch_size=4",
        f"--config.data.features={features}",
        f"--config.data.source={ucf.root / 'labels'}",
        f"--config.data.root={tmp_path}",
        f"--config.model.clip={ucf.config.model.clip}",
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "train.csv, line 5: feature file" in error[0], done.stderr
    assert "Traceback" not in done.stderr


def test_xd_violence_and_shanghaitech_splits(tmp_path):
    clip = tmp_path / "clip"
    write_random_clip(clip)
    fight = "Bullet.in.the.Head.1990__#00-02-30_00-03-56_label_B1-0-0"
    shoot = "Bad.Boys.1995__#01-11-55_01-12-40_label_B2-G-0"
    normal = "A.Beautiful.Mind.2001__#00-01-45_00-02-50_label_A"
    calm = "v=-5r1wFyKfFo__#1_label_A"
    xd = write_features(
        tmp_path / "xd",
        {
            "train": [(f"/x/{v}__{k}.npy", 7) for v in (fight, normal) for k in range(5)],
            "test": [(f"/x/{v}__0.npy", n) for v, n in ((shoot, 10), (calm, 4))],
        },
        width=32,
    )
    (xd / "annotations.txt").write_text(f"{shoot}.mp4 30 100 120 140\n")
    data = weak_input.WeakData("xd_violence", xd, clip, False, None, 32, 16)
    train, test = data.split("train"), data.split("test")
    assert [f.crops for f in train.features] == [5, 5] and train.videos[0].segments is None
    assert test.videos[0].categories == ("shooting", "explosion")
    assert test.videos[0].segments == ((30, 100), (120, 140)) and test.videos[0].frames == 160
    assert test.categories()[:, [0, 2, 6]].tolist() == [[0, 1, 1], [1, 0, 0]]

    sh = write_features(
        tmp_path / "sh",
        {
            "train": [(f"{v}__0.npy", 6) for v in ("01_001", "01_0014")],
            "test": [(f"{v}__0.npy", 7) for v in ("01_0015", "01_002")],
        },
        width=32,
    )
    (tmp_path / "sh_labels" / "test_frame_mask").mkdir(parents=True)
    mask = np.zeros(100, np.int64)
    mask[40:60] = 1
    np.save(tmp_path / "sh_labels" / "test_frame_mask" / "01_0015.npy", mask)
    data = weak_input.WeakData(
        "shanghaitech", sh, clip, False, None, 32, 16, labels=tmp_path / "sh_labels"
    )
    train, test = data.split("train"), data.split("test")
    assert [v.label for v in train.videos] == [0, 1]
    assert (test.videos[0].segments, test.videos[0].frames) == (((40, 60),), 100)
    assert (test.videos[1].segments, test.videos[1].frames) == ((), 112)


@pytest.mark.slow
def test_training_raises_the_frame_auc_of_the_synthetic_config(weak_full_run):
    """configs/synthetic_weak.py as documented (seed 0): trained 0.674 vs untrained 0.5 (the
    zero-initialised score head) measured; seeds 1 and 2 gave +0.17 and +0.11."""
    trained, untrained = weak_full_run.trained, weak_full_run.untrained
    assert trained["frame_auc"] >= untrained["frame_auc"] + 0.1, (trained, untrained)
    assert 0.0 <= trained["category_accuracy"] <= 1.0
