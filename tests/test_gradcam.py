"""Grad-CAM on constructed cases, and the explained forward pass of a real predictor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.ndimage import gaussian_filter

from jaxvad import scoring
from jaxvad.explain import attribution, images
from jaxvad.explain import maps as explain_map
from jaxvad.explain.gradcam import class_activation_maps, explain_step, grad_cam
from jaxvad.model import Predictor, model_inputs
from jaxvad.model.layers import gelu

B, T, h, w, K, S = 2, 3, 4, 4, 5, 32
CELL = S // h  # Pixels per feature cell.


def bumps(rng: np.random.Generator) -> np.ndarray:
    """Positive features `[B, T, h, w, K]`: every channel has activity everywhere, channel 0
    strongest at cell (1, 2) for sample 0 and (3, 0) for sample 1, channel 1 strongest at
    other cells."""
    a = rng.uniform(0.1, 0.3, (B, T, h, w, K)).astype(np.float32)
    a[0, :, 1, 2, 0] += 2.0
    a[1, :, 3, 0, 0] += 2.0
    a[0, :, 3, 3, 1] += 5.0
    a[1, :, 0, 3, 1] += 5.0
    return a


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_heatmap_peaks_where_only_one_region_can_change_the_score(sign):
    """S depends on the features of one cell only (channel 0 there, squared): Grad-CAM puts
    its peak in that cell's pixels, whatever other channels hold (channel 1 is stronger
    elsewhere but cannot change S); a score that falls with the region gives no heat."""
    features = bumps(np.random.default_rng(0))
    region = {0: (1, 2), 1: (3, 0)}

    def score(a):
        picks = jnp.stack([a[b, :, *region[b], 0] for b in range(B)])  # [B, T]
        return sign * (picks**2).sum(axis=1), None

    heat, _ = grad_cam(score, jnp.asarray(features), S)
    heat = np.asarray(heat)
    assert heat.shape == (B, S, S)
    if sign < 0:
        np.testing.assert_array_equal(heat, 0.0)  # ReLU: nothing raises S.
        return
    for b, (i, j) in region.items():
        row, col = images.peak(heat[b])
        assert (row // CELL, col // CELL) == (i, j)
        assert heat[b].min() == 0.0 and heat[b].max() == pytest.approx(1.0)


def test_weights_are_mean_gradients_and_time_is_averaged():
    """Linear S = Σ_k c_k Σ_{t,i,j} A^k: ∂S/∂A^k = c_k everywhere, so α_k = c_k and the heatmap
    is the min–max of mean_t ReLU(Σ_k c_k A^k) (the grid is the frame: no upsampling)."""
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (1, T, 2, 2, K)).astype(np.float32)
    c = rng.uniform(-0.5, 1.0, K).astype(np.float32)
    heat, _ = grad_cam(lambda x: ((x * c).sum(axis=(1, 2, 3, 4)), None), jnp.asarray(a), 2)
    expected = np.maximum((a * c).sum(-1), 0).mean(axis=1)[0]  # [2, 2]: the grid itself.
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(np.asarray(heat)[0], expected, atol=1e-6)


def tiny_predictor() -> tuple[nnx.GraphDef, nnx.State, dict, np.ndarray, np.ndarray]:
    """A random tiny predictor (graphdef, params), a random batch of B samples, and each
    sample's normalisation shift and scale `[B, 2]`."""
    model = Predictor(
        image_size=S,
        channels=1,
        history=T,
        patch=8,
        width=16,
        spatial_depth=1,
        temporal_depth=1,
        heads=2,
        motion_channels=(4, 8, 8),
        decoder_channels=(8, 8, 4),
        rngs=nnx.Rngs(0),
    )
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(2)
    batch = {
        "frames": rng.integers(0, 256, (B, T, S, S, 1), dtype=np.uint8),
        "flows": rng.normal(0, 0.3, (B, T, S, S, 2)).astype(np.float16),
        "target_frame": rng.integers(0, 256, (B, S, S, 1), dtype=np.uint8),
        "target_flow": rng.normal(0, 0.3, (B, S, S, 2)).astype(np.float16),
    }
    shift = np.array([[0.1, 0.01], [0.2, 0.02]], np.float32)
    scale = np.array([[0.5, 0.05], [0.25, 0.1]], np.float32)
    return graphdef, params, batch, shift, scale


def test_explain_step_matches_the_model_and_its_errors():
    graphdef, params, batch, shift, scale = tiny_predictor()
    out = jax.jit(lambda p, b, s0, s1: explain_step(p, b, s0, s1, graphdef=graphdef, alpha=2.0))(
        params, batch, shift, scale
    )
    forward = jax.jit(lambda p, frames, flows: nnx.merge(graphdef, p)(frames, flows))
    ref = forward(
        params,
        jnp.asarray(batch["frames"], jnp.float32) / 127.5 - 1,
        jnp.asarray(batch["flows"], jnp.float32),
    )
    target = batch["target_frame"].astype(np.float32) / 127.5 - 1
    e_rgb = ((np.asarray(ref["frame"]) - target) ** 2).mean(axis=(1, 2, 3))
    e_flow = ((np.asarray(ref["flow"]) - batch["target_flow"].astype(np.float32)) ** 2).mean(
        axis=(1, 2, 3)
    )
    np.testing.assert_allclose(out["rgb"], e_rgb, rtol=1e-5)
    np.testing.assert_allclose(out["flow"], e_flow, rtol=1e-5)
    expected = (e_rgb - shift[:, 0]) / scale[:, 0] + 2.0 * (e_flow - shift[:, 1]) / scale[:, 1]
    np.testing.assert_allclose(out["score"], expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["rgb_map"]).mean(axis=(1, 2)), e_rgb, rtol=1e-5)
    assert out["gradcam"].shape == (B, S, S) and out["predicted"].dtype == np.uint8
    assert float(out["gradcam"].min()) >= 0.0 and float(out["gradcam"].max()) <= 1.0
    predicted = np.round((np.clip(np.asarray(ref["frame"]), -1, 1) + 1) * 127.5)
    np.testing.assert_allclose(np.asarray(out["predicted"], np.float32), predicted, atol=1)


def test_attribution_uses_training_normalised_errors():
    """E_flow is far smaller than E_rgb in raw units; z-scores decide."""
    assert attribution.modality(z_rgb=0.5, z_flow=6.0) == "motion"
    assert attribution.modality(z_rgb=4.0, z_flow=1.0) == "appearance"
    text = attribution.sentence(0.5, 6.0)
    assert text.startswith("Abnormal motion pattern") and "+6.0 σ" in text and "+0.5 σ" in text
    assert attribution.sentence(4.0, -1.0).startswith("Unusual appearance")


def test_overlay_and_crop():
    frame = np.full((S, S, 1), 100, np.uint8)
    heat = np.zeros((S, S), np.float32)
    heat[3, 29] = 1.0
    blended = images.overlay(frame, heat, beta=0.25)
    red = images.colormap(np.ones((1, 1)))[0, 0].astype(np.float32)
    np.testing.assert_array_equal(blended[3, 29], np.round(0.25 * 100 + 0.75 * red))
    crop = images.crop_around(frame, heat, 0.5)
    assert crop.shape == (16, 16, 3)  # Moved inside the frame at the top-right corner.


def test_hirescam_stays_where_the_score_can_change_and_gradcam_spreads():
    """S = Σ_t of channel 0 at one cell: HiResCAM (gradient ⊙ activation) is zero outside that
    cell's pixels and peaks in it; Grad-CAM weights channel 0 by its mean gradient, so it is
    also hot wherever channel 0 is active (its peak moves to the stronger, unscored bump)."""
    a = np.full((1, T, h, w, K), 0.1, np.float32)
    a[0, :, 1, 2, 0] = 1.0  # The scored cell.
    a[0, :, 3, 0, 0] = 3.0  # Channel 0 is stronger here, where it cannot change S.

    def score(x):
        return x[:, :, 1, 2, 0].sum(axis=1), None

    maps, _ = class_activation_maps(score, jnp.asarray(a), h)  # The grid is the frame.
    hires, cam = np.asarray(maps["hirescam"])[0], np.asarray(maps["gradcam"])[0]
    outside = np.ones((h, w), bool)
    outside[1, 2] = False
    np.testing.assert_array_equal(hires[outside], 0.0)
    assert hires[1, 2] == pytest.approx(1.0)
    assert images.peak(cam) == (3, 0) and cam[1, 2] < 1.0
    heat, _ = grad_cam(score, jnp.asarray(a), h)
    np.testing.assert_array_equal(np.asarray(heat)[0], cam)


def test_the_named_maps_are_the_explain_steps_and_the_evaluators_anomaly_map():
    """`maps.map_step`: Grad-CAM and HiResCAM as `explain_step` gives them, the error map as
    `scoring.pixel_maps` (scipy's blur) gives it, min–max normalised; its score and
    `score_step`'s (the forward pass alone) are `explain_step`'s."""
    graphdef, params, batch, shift, scale = tiny_predictor()
    sigma = 1.7
    background = np.random.default_rng(3).uniform(0, 255, (S, S, 1)).astype(np.float32)
    step = jax.jit(
        lambda p, b, s0, s1, bg: explain_map.map_step(
            p, b, s0, s1, bg, graphdef=graphdef, alpha=2.0, sigma=sigma
        )
    )
    out = step(params, batch, shift, scale, background)
    reference = explain_step(params, batch, shift, scale, graphdef=graphdef, alpha=2.0)
    assert explain_map.names("predictor") == (
        "gradcam",
        "hirescam",
        "gradcam_fine",
        "anomaly_map",
        "anomaly_foreground",
    )
    assert explain_map.names("motion_mae") == (
        "gradcam",
        "hirescam",
        "anomaly_map",
        "anomaly_foreground",
    )
    for name in ("gradcam", "hirescam"):
        np.testing.assert_allclose(out[name], reference[name], atol=1e-6)
    expected = scoring.pixel_maps(
        {"rgb": np.asarray(reference["rgb_map"]), "flow": np.asarray(reference["flow_map"])},
        {"rgb": shift[:, 0], "flow": shift[:, 1]},
        {"rgb": scale[:, 0], "flow": scale[:, 1]},
        2.0,
        sigma,
    )
    low = expected.min(axis=(1, 2), keepdims=True)
    expected = (expected - low) / (expected.max(axis=(1, 2), keepdims=True) - low)
    np.testing.assert_allclose(out["anomaly_map"], expected, atol=1e-5)
    # The foreground map: A_rgb + (A_flow − min A_flow) ⊙ G / max G, G the blurred
    # |I_t − B|, min–max normalised (scipy here).
    difference = np.abs(batch["target_frame"].astype(np.float32) - background).mean(axis=-1)
    gate = np.stack([gaussian_filter(d, sigma, mode="nearest", truncate=4) for d in difference])
    gate /= gate.max(axis=(1, 2), keepdims=True)
    appearance, motion = (
        scoring.pixel_maps(
            {"rgb": np.asarray(reference["rgb_map"]), "flow": np.asarray(reference["flow_map"])},
            {"rgb": shift[:, 0], "flow": shift[:, 1]},
            {"rgb": scale[:, 0], "flow": scale[:, 1]},
            2.0,
            sigma,
            components=(c,),
        )
        for c in ("rgb", "flow")
    )
    both = appearance + (motion - motion.min(axis=(1, 2), keepdims=True)) * gate
    low = both.min(axis=(1, 2), keepdims=True)
    both = (both - low) / (both.max(axis=(1, 2), keepdims=True) - low)
    np.testing.assert_allclose(out["anomaly_foreground"], both, atol=1e-5)
    score = explain_map.score_step(params, batch, shift, scale, graphdef=graphdef, alpha=2.0)
    np.testing.assert_allclose(score, reference["score"], rtol=1e-5)
    np.testing.assert_allclose(out["score"], reference["score"], rtol=1e-6)


def test_fine_gradcam_is_the_gradient_at_the_motion_encoders_first_stage():
    """The predictor's finer split (`explained_fine`) gives the maps of the whole forward pass,
    and `gradcam_fine` is Grad-CAM of the score on the first motion stage's activations
    `[B, T, S/2, S/2, 4]`, computed here from the model's layers by hand."""
    graphdef, params, batch, shift, scale = tiny_predictor()
    model = nnx.merge(graphdef, params)
    inputs = model_inputs(batch)
    features, head = model.explained_fine(inputs)
    assert features.shape == (B, T, S // 2, S // 2, 4)
    whole = model.maps(inputs)
    for key in ("image", "rgb", "flow"):
        np.testing.assert_allclose(head(features)[key], whole[key], atol=1e-5)

    appearance = model.temporal(model.encode_frames(inputs["frames"]))[:, -1]
    first = gelu(model.motion_convs[0](inputs["flows"]))

    def score(a):
        for conv in model.motion_convs[1:]:
            a = gelu(conv(a))
        frame, flow = model.decode(appearance, a)
        errors = jnp.stack(
            [
                ((frame - inputs["target_frame"]) ** 2).mean(axis=(1, 2, 3)),
                ((flow - inputs["target_flow"]) ** 2).mean(axis=(1, 2, 3)),
            ],
            -1,
        )
        normalised = (errors - shift) / scale
        return normalised[:, 0] + 2.0 * normalised[:, 1], None

    expected, _ = class_activation_maps(score, first, S)
    background = np.zeros((S, S, 1), np.float32)
    out = explain_map.map_step(
        params, batch, shift, scale, background, graphdef=graphdef, alpha=2.0, sigma=0
    )
    np.testing.assert_allclose(out["gradcam_fine"], expected["gradcam"], atol=1e-5)
    assert not np.allclose(out["gradcam_fine"], out["gradcam"], atol=0.05)


def test_the_foreground_map_keeps_the_motion_error_where_the_frame_differs_from_the_background():
    """Two motion-error blobs, the stronger one where the frame shows the background (where a
    fast object was): the anomaly map peaks there, the foreground map on the blob the frame
    holds; the appearance term is kept wherever it is."""
    motion = np.zeros((1, S, S), np.float32)
    motion[0, 4:8, 4:8] = 3.0  # The frame shows the background there.
    motion[0, 20:26, 20:26] = 1.0  # The object the frame holds.
    appearance = np.zeros((1, S, S), np.float32)
    appearance[0, 10:12, 26:28] = 0.5  # An appearance error, on the background too.
    background = np.full((S, S, 1), 100.0, np.float32)
    frame = background.copy()[None]
    frame[0, 20:26, 20:26] = 180.0
    blurred = [explain_map.gaussian_blur(jnp.asarray(m), 1.0) for m in (appearance, motion)]
    gate = explain_map.foreground(jnp.asarray(frame), jnp.asarray(background), 1.0)
    both = np.asarray(explain_map.gated(*blurred, gate))[0]
    anomaly = np.asarray(blurred[0] + blurred[1])[0]
    assert images.peak(anomaly) in {(5, 5), (5, 6), (6, 5), (6, 6)}
    row, col = images.peak(both)
    assert 20 <= row < 26 and 20 <= col < 26 and both.max() == pytest.approx(1.0)
    assert both[:8, :8].max() < 0.02  # No foreground at the motion blob: (almost) no heat.
    assert both[10:12, 26:28].min() > 0.1  # The appearance error stays.
