"""The three detectors behind one interface (`jaxvad.model`): predictor, motion_mae and mdsf.

Shapes and the interface's contract, each paper's specifics (Table 1 of the motion-enhanced MAE,
motion weighting, MDSF's fused-discrepancy score), which parts of MDSF each loss term trains,
losses falling on the tiny synthetic config, and `jaxvad.evaluate` / `jaxvad.explain` run on
each model's checkpoint of the synthetic default config through their command lines.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, run_module
from flax import nnx

from jaxvad import config as config_lib
from jaxvad import inference, losses, model
from jaxvad import train as train_lib
from jaxvad.explain.command import RECORD_FIELDS
from jaxvad.metric_writer import read_jsonl
from jaxvad.model.layers import random_patch_mask
from jaxvad.model.mdsf import cut_paste, fusion_norm

# The frame detectors (the weakly supervised `aadc` reads snippet features: tests/test_aadc.py).
NAMES = tuple(n for n in model.MODELS if n not in config_lib.WEAK_MODELS)
# The terms that fall by 10 % in a 30-step run (the predictor's: `test_train`'s
# test_training_lowers_the_loss_and_writes_logs). MDSF's distillation target (the teacher)
# moves early on, and its fusion term (most of its loss) falls slowly: the discrepancies it
# ranks only carry a signal once the student imitates the teacher.
FALLING = {"motion_mae": ("rec", "motion"), "mdsf": ("teacher", "student")}


def tiny_model(name: str, **fields) -> tuple[object, model.VadModel]:
    config = load_config("synthetic", f"{name},tiny", **fields)
    return config, model.make_model(config, rngs=nnx.Rngs(0))


def random_inputs(config, batch: int = 3, seed: int = 1) -> dict[str, jax.Array]:
    T, S, C = config.history, config.data.size, config.data.channels
    keys = jax.random.split(jax.random.key(seed), 4)
    return {
        "frames": jax.random.uniform(keys[0], (batch, T, S, S, C), minval=-1.0, maxval=1.0),
        "flows": jax.random.normal(keys[1], (batch, T, S, S, 2)),
        "target_frame": jax.random.uniform(keys[2], (batch, S, S, C), minval=-1.0, maxval=1.0),
        "target_flow": jax.random.normal(keys[3], (batch, S, S, 2)),
    }


def training_rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(dropout=seed, masking=seed + 1)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_keeps_the_interface(name):
    config, net = tiny_model(name)
    inputs = random_inputs(config)
    S = config.data.size
    graphdef, params = nnx.split(net)

    @jax.jit
    def run(params, inputs):
        net = nnx.merge(graphdef, params)
        features, head = net.explained(inputs)
        one = net.maps({k: v[:1] for k, v in inputs.items()})
        terms = net.loss_terms(inputs, rngs=training_rngs(), vgg=None)
        return terms, net.maps(inputs), features, head(features), one

    terms, maps, features, again, one = run(params, inputs)
    expected_terms = set(type(net).LOSS_TERMS) - ({"perceptual"} if name == "predictor" else set())
    assert set(terms) == expected_terms
    assert all(t.shape == () and np.isfinite(float(t)) for t in terms.values())

    assert set(maps) == {"image", "rgb", "flow", *type(net).EXTRA_MAPS}
    assert maps["image"].shape == (3, S, S, 1)
    assert float(jnp.abs(maps["image"]).max()) <= 1.0
    for key in ("rgb", "flow", *type(net).EXTRA_MAPS):
        assert maps[key].shape == (3, S, S) and maps[key].dtype == jnp.float32
        assert float(maps[key].min()) >= 0.0
    assert features.ndim == 5 and features.shape[0] == 3
    for key in maps:
        np.testing.assert_allclose(again[key], maps[key], rtol=1e-6, atol=1e-7)
    # Samples are independent: what the batched Grad-CAM gradient relies on.
    np.testing.assert_allclose(one["rgb"], maps["rgb"][:1], rtol=1e-4, atol=1e-6)


# The tensor each model's deep feature (`VadModel.features`) pools, `[B, ...]` → mean → `[B, D]`.
POOLED = {
    "predictor": lambda net, x: net.fuse(
        net.temporal(net.encode_frames(x["frames"]))[:, -1], net.encode_motion(x["flows"])
    ),
    "motion_mae": lambda net, x: net.autoencoder.encode(x["target_frame"])[-1],
    "mdsf": lambda net, x: net.student.encode(x["target_frame"])[-1],
}


@pytest.mark.parametrize("name", NAMES)
def test_every_model_pools_a_deep_feature_in_the_error_steps_pass(name):
    """The error step's `features` are the mean of the documented tensor over its token or
    spatial axes; beside the maps in that one jitted step the encoder is not run twice."""
    config, net = tiny_model(name)
    inputs = random_inputs(config)
    graphdef, params = nnx.split(net, nnx.Param)
    batch = {
        "frames": ((inputs["frames"] + 1) * 127.5).astype(jnp.uint8),
        "flows": inputs["flows"].astype(jnp.float16),
        "target_frame": ((inputs["target_frame"] + 1) * 127.5).astype(jnp.uint8),
        "target_flow": inputs["target_flow"].astype(jnp.float16),
        **{k: jnp.zeros(3, jnp.int32) for k in ("video_index", "frame_index", "label")},
        **{k: jnp.ones(3, bool) for k in ("scored", "valid")},
    }
    steps = {
        features: jax.jit(
            functools.partial(
                inference.error_step, graphdef=graphdef, maps=False, features=features
            )
        )
        .lower(params, batch)
        .compile()
        for features in (False, True)
    }
    features = steps[True](params, batch)["features"]
    pooled = jax.jit(lambda p, x: POOLED[name](nnx.merge(graphdef, p), model.model_inputs(x)))
    pooled = pooled(params, batch)
    assert features.dtype == jnp.float32 and features.shape == (3, pooled.shape[-1])
    axes = tuple(range(1, pooled.ndim - 1))
    np.testing.assert_allclose(features, pooled.mean(axis=axes), rtol=1e-5, atol=1e-6)
    flops = {k: step.cost_analysis()["flops"] for k, step in steps.items()}
    assert flops[True] < 1.02 * flops[False]  # The features alone cost ~45 % of the step.
    # Without errors the step runs the model only as far as the features.
    alone = jax.jit(
        functools.partial(
            inference.error_step, graphdef=graphdef, maps=False, features=True, errors=False
        )
    )
    out = alone(params, batch)
    assert "rgb" not in out and "flow" not in out
    np.testing.assert_allclose(out["features"], features, rtol=1e-5, atol=1e-6)
    alone_flops = alone.lower(params, batch).compile().cost_analysis()["flops"]
    assert alone_flops < 0.7 * flops[True]  # 0.54 for the predictor and motion_mae, 0.21 MDSF.


@pytest.mark.parametrize("name", NAMES)
def test_every_models_deep_feature_reads_its_feature_inputs_only(name):
    """`VadModel.FEATURE_INPUTS` names what `features` reads: new values of every other input
    leave the features exactly as they were (`Detector.score_objects(changed_inputs=)` keeps
    them then), and new values of each named input change them."""
    config, net = tiny_model(name)
    inputs, other = random_inputs(config), random_inputs(config, seed=2)
    graphdef, params = nnx.split(net)
    run = jax.jit(lambda p, x: nnx.merge(graphdef, p).features(x))
    reads = type(net).FEATURE_INPUTS
    assert set(reads) <= set(inputs)
    features = np.asarray(run(params, inputs))
    unread = {k: other[k] for k in inputs if k not in reads}
    np.testing.assert_array_equal(run(params, inputs | unread), features)
    for key in reads:
        assert np.abs(np.asarray(run(params, inputs | {key: other[key]})) - features).max() > 1e-4


def test_a_model_refuses_another_models_fields():
    config = load_config("synthetic", "mdsf,tiny")
    config.unlock()
    config.model.patch = 8  # A predictor field.
    with pytest.raises(ValueError, match=r"\['patch'\], which model 'mdsf' does not take"):
        model.make_model(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown config variant 'mdfs'"):
        load_config("synthetic", "mdfs")
    assert load_config("synthetic", "motion_mae").history == 1
    assert load_config("synthetic", "motion_mae,tiny").model.widths == (8, 16, 32)


def test_motion_mae_is_table_1_of_its_paper():
    config = load_config("synthetic", "motion_mae", **{"data.size": 200})
    net = model.make_model(config, rngs=nnx.Rngs(0))
    params = nnx.state(net, nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(params)) == 332_801
    frame = jax.ShapeDtypeStruct((2, 200, 200, 1), jnp.float32)
    stages = jax.eval_shape(lambda x: net.autoencoder.encode(x), frame)
    assert [s.shape[1:] for s in stages] == [(100, 100, 32), (50, 50, 64), (25, 25, 128)]
    image = jax.eval_shape(lambda f: net.autoencoder.decode(f), stages[-1])
    assert image.shape == (2, 200, 200, 1)


def test_motion_mae_weights_its_error_by_the_flow_magnitude():
    config, net = tiny_model("motion_mae")
    inputs = random_inputs(config)
    maps = net.maps(inputs)
    rec = jnp.mean((maps["image"] - inputs["target_frame"]) ** 2, axis=-1)
    np.testing.assert_allclose(maps["rgb"], rec, rtol=1e-6)
    magnitude = jnp.sqrt(jnp.sum(inputs["target_flow"] ** 2, axis=-1))
    np.testing.assert_allclose(maps["flow"], magnitude * rec, rtol=1e-5, atol=1e-7)
    still = net.maps(inputs | {"target_flow": jnp.zeros_like(inputs["target_flow"])})
    assert float(jnp.abs(still["flow"]).max()) == 0.0
    np.testing.assert_allclose(still["rgb"], maps["rgb"])  # The flow is not a network input.
    terms = net.loss_terms(inputs, rngs=training_rngs(), vgg=None)
    again = net.loss_terms(inputs, rngs=training_rngs(), vgg=None)
    other = net.loss_terms(inputs, rngs=training_rngs(5), vgg=None)
    assert float(terms["rec"]) == float(again["rec"]) != float(other["rec"])


def test_patch_mask_hides_the_ratio_of_cells():
    keep = np.asarray(random_patch_mask(jax.random.key(0), (4, 32, 48), 8, 0.25))[..., 0]
    cells = keep.reshape(4, 4, 8, 6, 8).transpose(0, 1, 3, 2, 4).reshape(4, 24, 64)
    assert np.all(cells.min(-1) == cells.max(-1))  # Each 8×8 cell is kept or hidden whole.
    assert list((cells[..., 0] == 0).sum(-1)) == [6, 6, 6, 6]  # ⌊0.25 · 24⌋ per image.
    assert len({c.tobytes() for c in cells[..., 0]}) > 1  # Images draw their own cells.


def test_cut_paste_pastes_an_inverted_square_of_the_next_frame():
    frames = jax.random.uniform(jax.random.key(0), (3, 24, 24, 1), minval=-1.0, maxval=1.0)
    out = np.asarray(cut_paste(jax.random.key(1), frames, 6))
    frames = np.asarray(frames)
    for b in range(3):
        rows, cols = np.nonzero((out[b] != frames[b])[..., 0])
        assert rows.max() - rows.min() < 6 and cols.max() - cols.min() < 6 and rows.size > 0
        r, c = rows.min(), cols.min()
        r, c = min(r, 24 - 6), min(c, 24 - 6)
        square = out[b, r : r + 6, c : c + 6]
        donor = frames[(b + 1) % 3]
        found = [
            (i, j)
            for i in range(19)
            for j in range(19)
            if np.array_equal(-donor[i : i + 6, j : j + 6], square)
        ]
        assert found


def test_mdsf_score_is_the_norm_of_the_fused_discrepancy():
    config, net = tiny_model("mdsf")
    inputs = random_inputs(config)
    maps = net.maps(inputs)
    frame = inputs["target_frame"]
    fusion, saliencies = net.fuse(net.teacher.encode(frame), net.student.encode(frame))
    half = config.data.size // 2
    assert fusion.shape == (3, half, half, config.model.widths[0])
    np.testing.assert_allclose(
        maps["rgb"].mean(axis=(1, 2)), fusion_norm(fusion) ** 2 / half**2, rtol=1e-5
    )
    assert float(jnp.abs(maps["flow"]).max()) == 0.0
    assert [s.shape[1:] for s in saliencies] == [(16, 16), (8, 8), (4, 4)]
    assert float(maps["saliency"].min()) > 0.0 and float(maps["saliency"].max()) < 1.0
    # A student that equals the teacher leaves no discrepancy, hence a zero score.
    config, twin = tiny_model("mdsf", **{"model.student_convs": 2})
    nnx.update(twin.student, nnx.state(twin.teacher))
    assert float(jnp.abs(twin.maps(inputs)["rgb"]).max()) == 0.0


WEIGHTS = {
    "every": {"teacher": 1, "student": 1, "distill": 1, "fusion": 1},
    "fusion": {"teacher": 0, "student": 0, "distill": 0, "fusion": 1},
    "rest": {"teacher": 1, "student": 1, "distill": 1, "fusion": 0},
}


def _norms(grads: dict) -> dict[str, float]:
    """Gradient norm per top-level part of the model."""
    return {
        part: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree))))
        for part, tree in grads.items()
    }


def test_mdsf_every_part_that_affects_the_score_gets_gradients():
    config, net = tiny_model("mdsf")
    inputs = random_inputs(config, batch=4)
    graphdef, params = nnx.split(net, nnx.Param)

    @jax.jit
    def gradients(params):
        def loss(p, weights):
            terms = nnx.merge(graphdef, p).loss_terms(inputs, rngs=training_rngs(), vgg=None)
            return losses.total_loss(terms, weights)

        return {k: jax.grad(loss)(params, w) for k, w in WEIGHTS.items()}

    grads = {k: nnx.to_pure_dict(g) for k, g in gradients(params).items()}
    every = grads["every"]
    assert set(every) == {"teacher", "student", "amplifiers", "saliency", "align"}
    # Every tensor, the amplification MLPs and the saliency 1×1 convs included.
    zero = [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_leaves_with_path(every)
        if float(jnp.abs(g).max()) == 0
    ]
    assert not zero
    # The fusion term trains only the fusion layers; the others only the two networks.
    fusion, rest = _norms(grads["fusion"]), _norms(grads["rest"])
    assert fusion["teacher"] == fusion["student"] == 0.0
    assert min(fusion["amplifiers"], fusion["saliency"], fusion["align"]) > 0
    assert rest["amplifiers"] == rest["saliency"] == rest["align"] == 0.0
    assert min(rest["teacher"], rest["student"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", FALLING)
def test_losses_fall_on_the_tiny_synthetic_config(name, synthetic_root, tmp_path):
    config = load_config(
        "synthetic", f"{name},tiny", **{"data.root": str(synthetic_root), "train.num_steps": 30}
    )
    train_lib.train(config, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    loss = np.array([r["loss"] for r in rows])
    assert loss[-5:].mean() < loss[:5].mean(), loss
    for key in (f"loss_{t}" for t in FALLING[name]):
        values = np.array([r[key] for r in rows])
        assert values[-5:].mean() < 0.9 * values[:5].mean(), (key, values)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["motion_mae", "mdsf"])
def test_synthetic_default_trains_and_is_evaluated_and_explained(name, labeled_data, tmp_path):
    """`configs/synthetic.py:<model>` (the default run's model, 64×64 and training settings, on
    the small labeled Ped2-like clips of `labeled_data`) through the three commands; nothing in
    them knows which model they run."""
    flags = [
        f"--config=configs/synthetic.py:{name}",
        "--config.data.dataset=ped2",
        f"--config.data.root={labeled_data['labeled']}",
        f"--workdir={tmp_path}",
    ]
    steps = ["--config.train.num_steps=20", "--config.train.checkpoint_every=20"]
    trained = run_module("jaxvad.train", *flags, *steps, "--config.train.log_every=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]

    evaluated = run_module("jaxvad.evaluate", *flags, *steps)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["frame"]["auc_micro"] <= 1.0
    assert metrics["checkpoint_step"] == 20 and metrics["protocol"]["frames"] > 0

    explained = run_module("jaxvad.explain", *flags, *steps, "--split=test", "--top=3")
    assert explained.returncode == 0, explained.stderr[-3000:]
    folder = tmp_path / "explain" / "test"
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(tuple(r) == RECORD_FIELDS for r in records)
    extra = model.MODELS[name].EXTRA_MAPS
    for record in records:
        assert set(extra) <= set(record["images"])
        assert all((folder / path).is_file() for path in record["images"].values())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["model"] == name
    page = (folder / "report.html").read_text()
    assert all(title in page for title in extra.values())
