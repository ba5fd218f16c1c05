"""Loss terms of the training objective (DESIGN.md, "Training objective"):

    L = λ1·L_rgb + λ2·L_flow + λ3·L_perc + λ4·L_SSIM + λ5·L_grad

Every term is a pure, jit-able function of jnp arrays computed in float32 whatever the input
dtype, returning a float32 scalar. Frames are in model space [-1, 1], `[B, H, W, C]` with C = 1
or 3; flows are `[B, H, W, 2]`. L_perc compares activations of a frozen VGG16 whose torchvision
weights the user supplies as a safetensors file (`load_vgg16_features`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

LOSS_TERMS = ("rgb", "flow", "perceptual", "ssim", "gradient")

# torchvision `vgg16().features`: per conv, (the ReLU after it, its index in `features`, C_in,
# C_out). `features` holds a MaxPool2d(2, 2) at the indices in `_VGG16_POOLS`.
_VGG16_CONVS = (
    ("relu1_1", 0, 3, 64),
    ("relu1_2", 2, 64, 64),
    ("relu2_1", 5, 64, 128),
    ("relu2_2", 7, 128, 128),
    ("relu3_1", 10, 128, 256),
    ("relu3_2", 12, 256, 256),
    ("relu3_3", 14, 256, 256),
    ("relu4_1", 17, 256, 512),
    ("relu4_2", 19, 512, 512),
    ("relu4_3", 21, 512, 512),
    ("relu5_1", 24, 512, 512),
    ("relu5_2", 26, 512, 512),
    ("relu5_3", 28, 512, 512),
)
_VGG16_POOLS = (4, 9, 16, 23)
VGG16_LAYERS = tuple(name for name, *_ in _VGG16_CONVS)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _to01(images: jax.Array) -> jax.Array:
    """Model space [-1, 1] → [0, 1], float32. No clipping: it would zero the gradients there."""
    return (_f32(images) + 1.0) / 2.0


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over all elements of two equal-shape arrays (frames or flows) → scalar."""
    return jnp.mean(jnp.square(_f32(pred) - _f32(target)))


def ssim(pred01: jax.Array, target01: jax.Array) -> jax.Array:
    """Per-image SSIM of `[B, H, W, C]` images in [0, 1] → `[B]`.

    `dm_pix.ssim` with its defaults: 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03,
    population (co)variances, averaged over the valid (unpadded) window positions and the
    channels; needs H, W ≥ 11.
    """
    return dm_pix.ssim(_f32(pred01), _f32(target01), max_val=1.0)


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean over the batch of 1 − SSIM of `[B, H, W, C]` frames in [-1, 1] → scalar."""
    return jnp.mean(1.0 - ssim(_to01(pred), _to01(target)))


def gradient_difference_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Gradient difference loss (Mathieu et al. 2016, α = 1) of `[B, H, W, C]` frames → scalar.

    mean | |∂x pred| − |∂x target| | + mean | |∂y pred| − |∂y target| |, with ∂ the difference
    of neighbouring pixels (so the x term averages over `[B, H, W-1, C]`, the y term over
    `[B, H-1, W, C]`).
    """
    pred, target = _f32(pred), _f32(target)
    return sum(
        jnp.mean(jnp.abs(jnp.abs(jnp.diff(pred, axis=axis)) - jnp.abs(jnp.diff(target, axis=axis))))
        for axis in (2, 1)
    )


class VggWeightsError(ValueError):
    """The VGG16 weights file is missing, unreadable, or not in torchvision's `vgg16` layout."""


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=("kernels", "biases"), meta_fields=("layers",)
)
@dataclasses.dataclass(frozen=True)
class Vgg16Features:
    """Frozen VGG16 convolutions, conv1_1 up to the deepest requested layer (a pytree).

    Pass it to `jax.jit` as an argument (the arrays are leaves, `layers` is static metadata) or
    close over it (the arrays become constants of the compiled program).

    kernels: per conv, `[3, 3, C_in, C_out]` float32 (HWIO), in network order.
    biases: per conv, `[C_out]` float32.
    layers: the activations the perceptual loss compares, names from `VGG16_LAYERS`.
    """

    kernels: tuple[jax.Array, ...]
    biases: tuple[jax.Array, ...]
    layers: tuple[str, ...]


def _read_tensors(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The tensors of `keys` present in the safetensors file (only those are read)."""
    try:
        with safe_open(path, framework="np") as f:
            present = set(f.keys())
            return {key: f.get_tensor(key) for key in keys if key in present}
    except SafetensorError as err:
        raise VggWeightsError(
            f"{path}: not a readable safetensors file ({err}); convert a torchvision state dict "
            "with safetensors.torch.save_file(vgg16(weights=...).state_dict(), path)"
        ) from err


def load_vgg16_features(
    path: str | os.PathLike,
    *,
    layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3"),
) -> Vgg16Features:
    """Loads the VGG16 convolutions that `layers` need from a safetensors file.

    The file holds torchvision's `vgg16().state_dict()` (or just its `features.*` entries):
    `features.{i}.weight` `[C_out, C_in, 3, 3]` (OIHW) and `features.{i}.bias` `[C_out]` for
    the conv indices i = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28. Only the convs up to
    the deepest requested layer are read. Raises `VggWeightsError` (a `ValueError`) naming the
    file and tensor when the file is missing or unreadable or a tensor is missing or misshapen,
    and `ValueError` for an unknown layer name.
    """
    layers = tuple(layers)
    unknown = [layer for layer in layers if layer not in VGG16_LAYERS]
    if unknown or not layers:
        raise ValueError(f"unknown VGG16 layers {unknown or layers}; choose from {VGG16_LAYERS}")
    path = Path(path)
    if not path.is_file():
        raise VggWeightsError(f"VGG16 weights file not found: {path}")
    convs = _VGG16_CONVS[: max(VGG16_LAYERS.index(layer) for layer in layers) + 1]
    expected = {}
    for _, index, c_in, c_out in convs:
        expected[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        expected[f"features.{index}.bias"] = (c_out,)
    tensors = _read_tensors(path, list(expected))
    for key, shape in expected.items():
        if key not in tensors:
            raise VggWeightsError(
                f"{path}: tensor {key!r} missing (expected torchvision vgg16().state_dict() names)"
            )
        if tensors[key].shape != shape:
            raise VggWeightsError(
                f"{path}: tensor {key!r} has shape {list(tensors[key].shape)}, "
                f"expected {list(shape)}"
            )
    return Vgg16Features(
        kernels=tuple(
            jnp.asarray(tensors[f"features.{i}.weight"].transpose(2, 3, 1, 0), jnp.float32)
            for _, i, _, _ in convs
        ),
        biases=tuple(
            jnp.asarray(tensors[f"features.{i}.bias"], jnp.float32) for _, i, _, _ in convs
        ),
        layers=layers,
    )


def vgg16_activations(features: Vgg16Features, images: jax.Array) -> dict[str, jax.Array]:
    """VGG16 activations of `[B, H, W, C]` frames in [-1, 1] (C = 1 or 3), as torchvision.

    Frames map to [0, 1], gray repeats to 3 channels, then ImageNet normalisation. Returns
    `{layer: [B, H / 2^k, W / 2^k, C_layer]}` for `features.layers` (k = pools passed, floored).
    """
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"VGG16 needs 1 or 3 channels, got images of shape {images.shape}")
    x = jnp.broadcast_to(_to01(images), (*images.shape[:-1], 3))
    x = (x - jnp.asarray(_IMAGENET_MEAN)) / jnp.asarray(_IMAGENET_STD)
    activations = {}
    # zip stops at the deepest loaded conv.
    for (name, index, _, _), kernel, bias in zip(
        _VGG16_CONVS, features.kernels, features.biases, strict=False
    ):
        if index - 1 in _VGG16_POOLS:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        x = jax.lax.conv_general_dilated(
            x,
            jax.lax.stop_gradient(kernel),
            window_strides=(1, 1),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x = jax.nn.relu(x + jax.lax.stop_gradient(bias))
        if name in features.layers:
            activations[name] = x
    return activations


def perceptual_loss(features: Vgg16Features, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean over `features.layers` of the MSE of VGG16 activations of `[B, H, W, C]` frames in
    [-1, 1] → scalar. The VGG weights get no gradient."""
    activations = vgg16_activations(features, jnp.concatenate([pred, target]))
    return jnp.mean(jnp.stack([mse(*jnp.split(a, 2)) for a in activations.values()]))


def loss_terms(
    pred_frame: jax.Array,
    pred_flow: jax.Array,
    target_frame: jax.Array,
    target_flow: jax.Array,
    *,
    vgg: Vgg16Features | None,
) -> dict[str, jax.Array]:
    """Every loss term (keys from `LOSS_TERMS`; "perceptual" only when `vgg` is given) → scalars.

    pred_frame, target_frame: `[B, H, W, C]` next frame in [-1, 1], C = 1 or 3, H, W ≥ 11.
    pred_flow, target_flow: `[B, H, W, 2]` next flow.
    """
    terms = {"rgb": mse(pred_frame, target_frame), "flow": mse(pred_flow, target_flow)}
    if vgg is not None:
        terms["perceptual"] = perceptual_loss(vgg, pred_frame, target_frame)
    terms["ssim"] = ssim_loss(pred_frame, target_frame)
    terms["gradient"] = gradient_difference_loss(pred_frame, target_frame)
    return terms


def total_loss(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """Σ weights[k]·terms[k] over the terms present → scalar.

    Weights are Python floats (static under jit). A zero-weight term is left out of the sum
    rather than multiplied by 0: it stays a logged diagnostic, its gradient is not computed,
    and an infinite value cannot turn the loss into NaN (0·inf). A term without a weight is a
    KeyError.
    """
    return sum(
        (weights[key] * value for key, value in terms.items() if weights[key] != 0),
        start=jnp.zeros((), jnp.float32),
    )
