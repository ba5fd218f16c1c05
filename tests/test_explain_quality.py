"""Explanation quality metrics on constructed cases whose answers are known analytically."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from jaxvad.explain import quality

S = 16  # Frame side.
SIDE = 4  # Side of the region that drives the score.
AREA = SIDE * SIDE / (S * S)  # |R| / S².
STEPS = 32


def blocks(rng: np.random.Generator, count: int, side: int, lowest: int = 0) -> np.ndarray:
    """`[count, S, S]` bool masks, each a `side` × `side` block with its top-left corner drawn
    uniformly from [lowest, S − side]²."""
    masks = np.zeros((count, S, S), bool)
    for mask, (i, j) in zip(masks, rng.integers(lowest, S - side + 1, (count, 2)), strict=True):
        mask[i : i + side, j : j + side] = True
    return masks


def region_case(rng: np.random.Generator, count: int):
    """A score driven by one region R per sample: score = mean_R(frame) + mean_R(flow), inputs
    uniform in [0.5, 1], reference zeros. R never covers pixel (0, 0), where a constant map
    points. Returns (R `[B, S, S]` bool, inputs, reference, jitted score)."""
    region = blocks(rng, count, SIDE, lowest=1)
    inputs = {
        "frame": jnp.asarray(rng.uniform(0.5, 1, (count, S, S, 3)), jnp.float32),
        "flow": jnp.asarray(rng.uniform(0.5, 1, (count, S, S, 2)), jnp.float32),
    }
    reference = {name: jnp.zeros_like(x) for name, x in inputs.items()}
    weight = jnp.asarray(region, jnp.float32) / (SIDE * SIDE)

    @jax.jit
    def score(x):
        return sum((x[name].mean(-1) * weight).sum((1, 2)) for name in ("frame", "flow"))

    return region, inputs, reference, score


def test_region_indicator_beats_random_and_constant_maps():
    rng = np.random.default_rng(0)
    B = 32
    region, inputs, reference, score = region_case(rng, B)
    maps = {
        "indicator": jnp.asarray(region, jnp.float32),
        "random": jnp.asarray(rng.uniform(size=(B, S, S)), jnp.float32),
        "constant": jnp.zeros((B, S, S)),
    }
    key = jax.random.key(1)
    runs = {
        name: quality.deletion_insertion(score, inputs, reference, m, steps=STEPS, key=key)
        for name, m in maps.items()
    }
    points = {name: quality.pointing(m, jnp.asarray(region), 0.0) for name, m in maps.items()}

    good = runs["indicator"]
    np.testing.assert_allclose(good["fractions"], np.linspace(0, 1, STEPS + 1), atol=1e-7)
    for run in runs.values():
        np.testing.assert_allclose(run["deletion"][:, [0, -1]], [[1, 0]] * B, atol=1e-6)
        np.testing.assert_allclose(run["insertion"][:, [0, -1]], [[0, 1]] * B, atol=1e-6)
    # Once all of R is deleted (inserted) the score is the reference's (the input's).
    done = good["fractions"] >= AREA
    np.testing.assert_allclose(good["deletion"][:, done], 0, atol=1e-6)
    np.testing.assert_allclose(good["insertion"][:, done], 1, atol=1e-6)
    # Half of R gone keeps at most 2/3 of its mass (values in [0.5, 1]): AUC ≤ (1 + 4/3)/64.
    bound = AREA / 2 + 1 / (2 * STEPS)
    assert (good["deletion_auc"] <= bound).all()
    assert (good["insertion_auc"] >= 1 - bound).all()
    assert points["indicator"]["strict"].all()

    for name in ("random", "constant"):
        bad = runs[name]
        # A random order removes R's pixels at uniform times: E[AUC] = 1/2 for both curves.
        assert abs(float(bad["deletion_auc"].mean()) - 0.5) < 0.05, name
        assert abs(float(bad["insertion_auc"].mean()) - 0.5) < 0.05, name
        assert (bad["deletion_auc"] > good["deletion_auc"] + 0.15).all(), name
        assert (bad["insertion_auc"] < good["insertion_auc"] - 0.15).all(), name
    # A random peak lands in R with probability |R|/S² = 1/16.
    assert float(points["random"]["strict"].mean()) <= 0.25
    # A flat map's peak is its centre (of the centroid's four nearest pixels, the first in
    # row-major order): it hits R exactly when R covers that pixel.
    centre = S // 2 - 1
    np.testing.assert_array_equal(points["constant"]["strict"], region[:, centre, centre])
    assert float(points["constant"]["strict"].mean()) <= 0.25


def test_unchanging_score_gives_nan_curves():
    rng = np.random.default_rng(0)
    _, inputs, reference, _ = region_case(rng, 2)
    run = quality.deletion_insertion(
        lambda x: jnp.zeros(2),
        inputs,
        reference,
        jnp.zeros((2, S, S)),
        steps=4,
        key=jax.random.key(0),
    )
    assert np.isnan(run["deletion_auc"]).all()
    assert np.isnan(run["insertion_auc"]).all()


def test_random_map_points_at_the_mask_area_fraction():
    rng = np.random.default_rng(0)
    B, side = 2000, 8
    masks = blocks(rng, B, side)
    maps = jnp.asarray(rng.uniform(size=(B, S, S)), jnp.float32)
    strict = np.asarray(quality.pointing(maps, jnp.asarray(masks), 0.0)["strict"])
    mean, low, high = quality.bootstrap_interval(strict)
    assert mean == pytest.approx(strict.mean())
    assert low <= masks.mean() <= high
    # Binomial standard error √(p(1−p)/B) with p = 1/4: a 95 % interval ≈ 0.038 wide.
    assert 0.03 < high - low < 0.046


def test_pointing_on_hand_made_masks():
    maps = np.zeros((4, 8, 8), np.float32)
    masks = np.zeros((4, 8, 8), bool)
    maps[0, 1, 1] = 1.0
    masks[0, 4, 5] = masks[0, 7, 7] = True  # Nearest: (4, 5), 5 pixels away (3-4-5).
    maps[1, 2, 3] = 1.0
    masks[1, 2:4, 2:4] = True
    maps[2, 0, 5] = maps[2, 3, 0] = 1.0  # A tie: (0, 5) comes first in row-major order.
    masks[2, 0, 5] = True
    maps[3, 6, 6] = 1.0  # An empty mask.
    for tolerance, near in ((4.9, [False, True, True, False]), (5.1, [True, True, True, False])):
        result = quality.pointing(jnp.asarray(maps), jnp.asarray(masks), tolerance)
        np.testing.assert_array_equal(result["strict"], [False, True, True, False])
        np.testing.assert_allclose(result["distance"], [5.0, 0.0, 0.0, np.inf], rtol=1e-6)
        np.testing.assert_array_equal(result["near"], near)
        np.testing.assert_array_equal(result["valid"], [True, True, True, False])
        assert result["distance"].dtype == jnp.float32


def test_importance_order_breaks_ties_at_random():
    N = S * S
    constant = quality.importance_order(jnp.zeros((3, S, S)), jax.random.key(0))
    assert constant.dtype == jnp.int32
    np.testing.assert_array_equal(np.sort(constant, axis=1), np.tile(np.arange(N), (3, 1)))
    assert not (constant == np.arange(N)).all(axis=1).any()
    assert not (constant[0] == constant[1]).all()
    increasing = jnp.arange(N, dtype=jnp.float32).reshape(1, S, S)
    np.testing.assert_array_equal(
        quality.importance_order(increasing, jax.random.key(0))[0], np.arange(N)[::-1]
    )
    # Two levels: the top level's pixels come first, in a random order among themselves.
    top = np.random.default_rng(0).permutation(N)[:40]
    two_levels = np.zeros(N, np.float32)
    two_levels[top] = 1.0
    order = quality.importance_order(jnp.asarray(two_levels).reshape(1, S, S), jax.random.key(0))
    assert set(np.asarray(order[0, :40]).tolist()) == set(top.tolist())
    assert not (np.asarray(order[0, :40]) == np.sort(top)).all()


def test_max_sensitivity_bounds():
    rng = np.random.default_rng(0)
    B, radius, N = 4, 0.05, S * S
    frame = rng.uniform(0.5, 1, (B, S, S, 1)).astype(np.float32)
    count = rng.integers(1, 255, (B, S, S, 1)).astype(np.uint8)
    count[0] = 0  # A map that is 0 everywhere: the distance is not divided.
    inputs = {"frame": jnp.asarray(frame), "count": jnp.asarray(count)}
    key = jax.random.key(0)
    kwargs = {"radius": radius, "samples": 10, "key": key}

    ignoring = quality.max_sensitivity(lambda x: jnp.ones((B, S, S)), inputs, **kwargs)
    np.testing.assert_array_equal(ignoring, np.zeros(B))

    # Φ(x) = x: the distance is ‖ε‖₂, at most radius·√N and near radius·√(N/3) (E ε² = r²/3).
    norms = np.linalg.norm(frame.reshape(B, -1), axis=1)
    itself = np.asarray(quality.max_sensitivity(lambda x: x["frame"][..., 0], inputs, **kwargs))
    assert (itself <= radius * math.sqrt(N) / norms).all()
    np.testing.assert_allclose(itself * norms / (radius * math.sqrt(N / 3)), 1, atol=0.12)

    def counts(x):
        assert x["count"].dtype == jnp.float32
        return x["count"][..., 0]

    cast = np.asarray(quality.max_sensitivity(counts, inputs, **kwargs))
    count_norms = np.linalg.norm(count.reshape(B, -1).astype(np.float64), axis=1)
    count_norms[0] = 1.0
    np.testing.assert_allclose(cast * count_norms / (radius * math.sqrt(N / 3)), 1, atol=0.12)

    # Several maps from one call per draw: each measured as on its own, under the same draws.
    both = quality.max_sensitivity(
        lambda x: {"itself": x["frame"][..., 0], "counts": counts(x)}, inputs, **kwargs
    )
    np.testing.assert_allclose(both["itself"], itself, rtol=1e-6)
    np.testing.assert_allclose(both["counts"], cast, rtol=1e-6)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (20, 30)).astype(np.float32)
    b = (a + rng.integers(-3, 4, a.shape)).astype(np.float32)
    b[1] = -a[1]
    ours = np.asarray(quality.spearman(jnp.asarray(a), jnp.asarray(b)))
    theirs = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert ours[1] == pytest.approx(-1.0, abs=1e-6)


def test_spearman_constant_rows():
    a = jnp.asarray([[2.0, 2, 2], [2, 2, 2], [1, 2, 3], [1, 2, 3]])
    b = jnp.asarray([[2.0, 2, 2], [5, 5, 5], [4, 4, 4], [1, 2, 3]])
    np.testing.assert_allclose(quality.spearman(a, b), [1, 1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(quality.spearman(b, a), [1, 1, 0, 1], atol=1e-6)


def dict_case():
    """Fixed inputs `[B, S, S, 64]` and a two-layer linear map's parameters, input side first."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, S, S, 64)), jnp.float32)
    params = {
        "encoder": {
            "w": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32),
            "b": jnp.zeros(16),
        },
        "head": {"w": jnp.asarray(rng.normal(size=(16, 1)), jnp.float32), "b": jnp.zeros(1)},
    }
    return x, params


def test_randomisation_of_a_dict_pytree():
    x, params = dict_case()
    layers = quality.top_down_groups(params)
    assert layers == [("head",), ("encoder",)]
    key = jax.random.key(0)

    def linear(p):
        return ((x @ p["encoder"]["w"] + p["encoder"]["b"]) @ p["head"]["w"] + p["head"]["b"])[
            ..., 0
        ]

    result = quality.randomisation_test(linear, params, layers, key=key)
    assert result["correlation"].shape == (2, 3)
    assert result["passes"].all()

    # A map of the encoder alone is unchanged by the first step and not by the second.
    seen = []

    def encoder_only(p):
        seen.append(p)
        return (x @ p["encoder"]["w"]).sum(-1)

    result = quality.randomisation_test(encoder_only, params, layers, key=key)
    np.testing.assert_allclose(result["correlation"][0], 1, atol=1e-6)
    assert (np.abs(result["correlation"][1]) < 0.5).all()
    assert result["passes"].all()

    original, top, full = seen
    assert original is params
    np.testing.assert_array_equal(top["encoder"]["w"], params["encoder"]["w"])
    np.testing.assert_array_equal(full["head"]["w"], top["head"]["w"])  # One draw per leaf.
    w, redrawn = np.asarray(params["encoder"]["w"]), np.asarray(full["encoder"]["w"])
    assert not np.allclose(redrawn, w)
    assert redrawn.mean() == pytest.approx(w.mean(), abs=0.1)
    assert redrawn.std() == pytest.approx(w.std(), rel=0.1)
    assert np.asarray(full["encoder"]["b"]).std() == pytest.approx(quality.ZERO_STD, rel=0.5)

    flat = quality.randomisation_test(lambda p: x[..., 0], params, layers, key=key)
    np.testing.assert_array_equal(flat["correlation"], np.ones((2, 3)))
    assert not flat["passes"].any()
    with pytest.raises(ValueError, match="no parameter under"):
        quality.randomisation_test(linear, params, [("head",), ("decoder",)], key=key)


def test_randomisation_of_an_nnx_state():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, S, S, 8)), jnp.float32)
    graphdef, state = nnx.split(nnx.Conv(8, 1, (3, 3), rngs=nnx.Rngs(0)))
    layers = quality.top_down_groups(state)
    assert layers == [("kernel",), ("bias",)]
    key = jax.random.key(0)

    def conv(p):
        return nnx.merge(graphdef, p)(x)[..., 0]

    result = quality.randomisation_test(conv, state, layers, key=key)
    assert (np.abs(result["correlation"]) < 0.5).all()
    assert result["passes"].all()
    flat = quality.randomisation_test(lambda p: x[..., 0], state, layers, key=key)
    assert not flat["passes"].any()


def test_bootstrap_interval_covers_the_mean_and_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (400, 6400):
        values = rng.normal(3.0, 2.0, n)
        mean, low, high = quality.bootstrap_interval(values)
        assert low < 3.0 < high
        assert low < mean < high
        # The normal interval of the mean: 2 · 1.96 · s/√n.
        expected = 2 * 1.96 * values.std() / math.sqrt(n)
        assert (high - low) / expected == pytest.approx(1, abs=0.15)
        widths.append(high - low)
        padded = np.concatenate([values[:10], [np.nan, np.inf], values[10:]])
        assert quality.bootstrap_interval(padded) == (mean, low, high)
    assert widths[0] / widths[1] == pytest.approx(4, rel=0.2)
    assert all(np.isnan(quality.bootstrap_interval([np.nan, np.nan])))


def test_modality_check_by_hand():
    z_rgb = jnp.asarray([3.0, 1.0, 2.0, 2.0, 0.5])
    z_flow = jnp.asarray([1.0, 1.0, 1.0, 3.0, 1.0])
    # drop_rgb = [3, 1, 2, 2, 0.5], drop_flow = 2·z_flow = [2, 2, 2, 6, 2].
    named = ["appearance", "motion", "appearance", "appearance", "motion"]
    expected = [True, True, False, False, True]
    np.testing.assert_array_equal(quality.modality_check(z_rgb, z_flow, 2.0, named), expected)
    motion = jnp.asarray([name == "motion" for name in named])
    np.testing.assert_array_equal(quality.modality_check(z_rgb, z_flow, 2.0, motion), expected)
    np.testing.assert_array_equal(
        quality.modality_check(z_rgb, z_flow, 0.25, named), [True, False, True, True, False]
    )
    with pytest.raises(ValueError, match="flow"):
        quality.modality_check(z_rgb, z_flow, 2.0, ["flow"] * 5)
