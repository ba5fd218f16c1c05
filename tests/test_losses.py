"""Loss terms: zero for identical inputs and positive otherwise, SSIM against scikit-image, the
gradient-difference loss by hand, VGG16 loading errors, VGG16 activations against independent
NumPy (and, when installed, PyTorch) references, and the weighted sum."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from skimage.metrics import structural_similarity

from jaxvad import losses

# torchvision's `cfgs["D"]` (VGG16) up to relu3_3: conv widths, "M" = MaxPool2d(2, 2). torchvision
# numbers `features` as conv, relu per width and one module per "M"; the references below rebuild
# the network from this list, independently of the index table in `jaxvad.losses`.
VGG16_CFG_TO_RELU3_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
LAYERS = ("relu1_2", "relu2_2", "relu3_3")

# Jitted once for the whole file: compiled programs are shared between tests of equal shapes, and
# eager dispatch of dm-pix's SSIM alone costs seconds. The VGG weights are a jit argument (a
# pytree), not baked-in constants.
loss_terms = jax.jit(losses.loss_terms)
ssim = jax.jit(losses.ssim)
vgg16_activations = jax.jit(losses.vgg16_activations)


def torchvision_layout(cfg=VGG16_CFG_TO_RELU3_3):
    """[(features index, "reluB_N" name | None for a pool, C_in, C_out)] as torchvision numbers."""
    layout, index, c_in, block, n = [], 0, 3, 1, 0
    for v in cfg:
        if v == "M":
            layout.append((index, None, c_in, c_in))
            index, block, n = index + 1, block + 1, 0
        else:
            n += 1
            layout.append((index, f"relu{block}_{n}", c_in, v))
            index, c_in = index + 2, v
    return layout


def random_vgg_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised float32 weights in torchvision's `vgg16().state_dict()` naming (OIHW)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for index, name, c_in, c_out in torchvision_layout():
        if name is not None:
            std = math.sqrt(2.0 / (9 * c_in))
            weights[f"features.{index}.weight"] = rng.normal(0, std, (c_out, c_in, 3, 3))
            weights[f"features.{index}.bias"] = rng.normal(0, 0.1, (c_out,))
    return {key: value.astype(np.float32) for key, value in weights.items()}


@pytest.fixture(scope="module")
def vgg_weights() -> dict[str, np.ndarray]:
    return random_vgg_weights()


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, vgg_weights):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(vgg_weights, path)
    return path


def frames(seed: int, shape=(2, 32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ---- every term -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_terms_zero_for_identical_inputs_positive_for_different(vgg_file, channels):
    vgg = losses.load_vgg16_features(vgg_file)
    frame, other = frames(0, (2, 32, 32, channels)), frames(1, (2, 32, 32, channels))
    flow, other_flow = frames(2, (2, 32, 32, 2)), frames(3, (2, 32, 32, 2))

    same = loss_terms(frame, flow, frame, flow, vgg=vgg)
    assert set(same) == set(losses.LOSS_TERMS)
    for key, value in same.items():
        assert value.shape == () and value.dtype == jnp.float32, key
        assert abs(float(value)) < 1e-7, (key, float(value))

    different = loss_terms(frame, flow, other, other_flow, vgg=vgg)
    for key, value in different.items():
        assert float(value) > 1e-3, (key, float(value))


def test_loss_terms_without_vgg_skip_perceptual():
    frame, flow = frames(0), frames(1, (2, 32, 32, 2))
    terms = loss_terms(frame, flow, frames(2), flow, vgg=None)
    assert set(terms) == set(losses.LOSS_TERMS) - {"perceptual"}


def test_terms_computed_in_float32_from_bfloat16(vgg_file):
    vgg = losses.load_vgg16_features(vgg_file, layers=("relu1_2",))
    pred, target = frames(0).astype(jnp.bfloat16), frames(1).astype(jnp.bfloat16)
    flow = jnp.asarray(frames(2, (2, 32, 32, 2)), jnp.bfloat16)
    terms = loss_terms(pred, flow, target, flow * 0, vgg=vgg)
    assert {value.dtype for value in terms.values()} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(
        terms["rgb"], np.mean((np.float32(pred) - np.float32(target)) ** 2), rtol=1e-6
    )


# ---- SSIM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("correlated", [False, True])
def test_ssim_matches_skimage(channels, correlated):
    rng = np.random.default_rng(channels)
    a = rng.uniform(0, 1, (3, 64, 64, channels))
    b = (
        np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        if correlated
        else rng.uniform(0, 1, a.shape)
    )
    ours = np.asarray(ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    # No cropping needed: skimage filters with reflect padding but averages only the map cropped
    # by the window radius (5), i.e. the same valid positions dm-pix computes without padding;
    # truncate=3.5 (its default) gives the same 11-tap window as dm-pix's filter_size=11.
    reference = np.array(
        [
            structural_similarity(
                x,
                y,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                channel_axis=-1,
            )
            for x, y in zip(a, b, strict=True)
        ]
    )
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, reference, atol=1e-5)  # measured: ~1e-7 apart
    if correlated:  # the comparison is not only near SSIM ≈ 0
        assert reference.min() > 0.5


def test_ssim_loss_maps_model_space_to_unit_range():
    a, b = frames(0, (2, 32, 32, 1)), frames(1, (2, 32, 32, 1))
    expected = 1 - np.mean(ssim((a + 1) / 2, (b + 1) / 2))
    np.testing.assert_allclose(jax.jit(losses.ssim_loss)(a, b), expected, rtol=1e-6)


# ---- gradient difference -------------------------------------------------------------------


def test_gradient_difference_loss_by_hand():
    pred = np.array([[0, 1, 3], [0, 0, 0], [2, 2, 2]], np.float32)[None, :, :, None]
    target = np.array([[0, -2, -2], [1, 1, 1], [0, 0, 0]], np.float32)[None, :, :, None]
    # x (along W), |∂x pred| rows: [1, 2], [0, 0], [0, 0]; |∂x target|: [2, 0], [0, 0], [0, 0]
    #   → | |∂x pred| − |∂x target| | = [1, 2, 0, 0, 0, 0], mean 3/6 = 0.5
    # y (along H), |∂y pred| rows: [0, 1, 3], [2, 2, 2]; |∂y target|: [1, 3, 3], [1, 1, 1]
    #   → [1, 2, 0, 1, 1, 1], mean 6/6 = 1.0
    gdl = jax.jit(losses.gradient_difference_loss)
    np.testing.assert_allclose(gdl(pred, target), 1.5, rtol=1e-6)
    # Only gradient magnitudes count: a constant shift and a sign flip change nothing.
    assert float(gdl(pred, -pred + 0.3)) < 1e-7


# ---- VGG16 loading ---------------------------------------------------------------------------


def test_load_reads_only_the_convs_needed(tmp_path, vgg_weights):
    path = tmp_path / "first_conv.safetensors"
    save_file({k: v for k, v in vgg_weights.items() if k.startswith("features.0.")}, path)
    vgg = losses.load_vgg16_features(path, layers=["relu1_1"])
    assert vgg.layers == ("relu1_1",)
    assert [k.shape for k in vgg.kernels] == [(3, 3, 3, 64)]  # OIHW → HWIO
    np.testing.assert_array_equal(
        vgg.kernels[0], vgg_weights["features.0.weight"].transpose(2, 3, 1, 0)
    )
    with pytest.raises(ValueError, match=r"first_conv\.safetensors.*'features\.2\.weight' missing"):
        losses.load_vgg16_features(path, layers=["relu1_1", "relu1_2"])


def test_load_errors_name_the_file_and_tensor(tmp_path, vgg_weights):
    with pytest.raises(ValueError, match=r"not found: .*absent\.safetensors"):
        losses.load_vgg16_features(tmp_path / "absent.safetensors")

    wrong = dict(vgg_weights, **{"features.7.weight": np.zeros((128, 64, 3, 3), np.float32)})
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(
        losses.VggWeightsError,
        match=r"wrong\.safetensors: tensor 'features\.7\.weight' has shape \[128, 64, 3, 3\], "
        r"expected \[128, 128, 3, 3\]",
    ):
        losses.load_vgg16_features(tmp_path / "wrong.safetensors")

    (tmp_path / "vgg16.pth").write_bytes(b"\x80\x04 a pickle, not safetensors")
    with pytest.raises(losses.VggWeightsError, match=r"vgg16\.pth: not a readable safetensors"):
        losses.load_vgg16_features(tmp_path / "vgg16.pth")

    with pytest.raises(ValueError, match=r"unknown VGG16 layers \['conv3_3'\]"):
        losses.load_vgg16_features(tmp_path / "wrong.safetensors", layers=["relu1_2", "conv3_3"])


# ---- VGG16 activations and the perceptual loss -----------------------------------------------


def numpy_vgg(weights, images, layers):
    """float64 NumPy VGG16 as torchvision runs it: `[B, H, W, C]` frames in [-1, 1] →
    {layer: NHWC activations}."""
    x = np.repeat((images.astype(np.float64) + 1) / 2, 3 // images.shape[-1], axis=-1)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    out = {}
    for index, name, _, _ in torchvision_layout():
        if name is None:  # 2×2 max-pool, stride 2, floor
            b, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))
            continue
        kernel = weights[f"features.{index}.weight"].astype(np.float64)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = x.shape[1:3]
        x = sum(
            np.einsum("bhwi,oi->bhwo", padded[:, dy : dy + h, dx : dx + w], kernel[:, :, dy, dx])
            for dy in range(3)
            for dx in range(3)
        )
        x = np.maximum(x + weights[f"features.{index}.bias"], 0)
        if name in layers:
            out[name] = x
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_activations_and_perceptual_loss_match_numpy_reference(vgg_file, vgg_weights, channels):
    vgg = losses.load_vgg16_features(vgg_file, layers=LAYERS)
    # 18×22: odd sizes after the first pool check torchvision's floor pooling.
    pred, target = frames(0, (2, 18, 22, channels)), frames(1, (2, 18, 22, channels))
    ours = vgg16_activations(vgg, pred)
    reference = numpy_vgg(vgg_weights, pred, LAYERS)
    assert list(ours) == list(LAYERS)
    assert [a.shape for a in ours.values()] == [(2, 18, 22, 64), (2, 9, 11, 128), (2, 4, 5, 256)]
    for layer in LAYERS:
        np.testing.assert_allclose(ours[layer], reference[layer], rtol=1e-4, atol=1e-4)

    other = numpy_vgg(vgg_weights, target, LAYERS)
    expected = np.mean([np.mean((reference[k] - other[k]) ** 2) for k in LAYERS])
    got = jax.jit(losses.perceptual_loss)(vgg, pred, target)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_activations_match_torch(vgg_file, vgg_weights):
    try:
        import torch
        import torch.nn.functional as F  # noqa: N812
    except ImportError:
        pytest.skip("PyTorch is not installed; the NumPy reference test covers the same network")
    vgg = losses.load_vgg16_features(vgg_file, layers=LAYERS)
    pred = frames(0, (2, 20, 20, 3))
    x = torch.from_numpy((pred.transpose(0, 3, 1, 2) + 1) / 2)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    x, reference = x.float(), {}
    for index, name, _, _ in torchvision_layout():
        if name is None:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
            continue
        w, b = (torch.from_numpy(vgg_weights[f"features.{index}.{p}"]) for p in ("weight", "bias"))
        x = F.relu(F.conv2d(x, w, b, padding=1))
        if name in LAYERS:
            reference[name] = x.numpy().transpose(0, 2, 3, 1)
    ours = vgg16_activations(vgg, pred)
    for layer in LAYERS:
        np.testing.assert_allclose(ours[layer], reference[layer], rtol=1e-4, atol=1e-4)


def test_vgg_is_frozen_and_pred_gets_gradient(vgg_file):
    vgg = losses.load_vgg16_features(vgg_file, layers=("relu2_2",))
    pred, target = frames(0, (1, 16, 16, 3)), frames(1, (1, 16, 16, 3))
    grad_fn = jax.jit(jax.grad(losses.perceptual_loss, argnums=(0, 1)))
    vgg_grad, pred_grad = grad_fn(vgg, pred, target)
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(vgg_grad))
    assert np.any(pred_grad)


# ---- weighted sum -----------------------------------------------------------------------------


def test_total_loss_is_the_weighted_sum():
    frame, flow = frames(0), frames(1, (2, 32, 32, 2))
    terms = loss_terms(frame, flow, frames(2), flow * 0.5, vgg=None)
    weights = {"rgb": 1.0, "flow": 2.0, "perceptual": 0.3, "ssim": 0.5, "gradient": 0.25}
    expected = sum(weights[k] * float(v) for k, v in terms.items())
    np.testing.assert_allclose(losses.total_loss(terms, weights), expected, rtol=1e-6)
    jitted = jax.jit(lambda t: losses.total_loss(t, weights))
    np.testing.assert_allclose(jitted(terms), expected, rtol=1e-6)


def test_total_loss_leaves_out_zero_weight_terms():
    terms = {"rgb": jnp.float32(0.5), "flow": jnp.float32(0.25), "ssim": jnp.float32(jnp.inf)}
    weights = {"rgb": 1.0, "flow": 2.0, "ssim": 0.0}
    # Left out rather than multiplied by 0: an infinite zero-weight term does not make it NaN.
    np.testing.assert_allclose(losses.total_loss(terms, weights), 1.0 * 0.5 + 2.0 * 0.25)
    with pytest.raises(KeyError, match="gradient"):
        losses.total_loss({"gradient": jnp.float32(1.0)}, {"rgb": 1.0})
