"""Model tests on CPU with a tiny predictor (32×32, patch 8, width 32, T=3, batch 2).

Shapes are checked with `jax.eval_shape` (no compilation); forward passes run jitted, once per
distinct function, because XLA:CPU compiles slowly on small machines.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvad.model import MODELS, Mdsf, MotionMae, Predictor
from jaxvad.model.aadc import Aadc
from jaxvad.model.layers import (
    ConvDecoder,
    MultiHeadAttention,
    TemporalConv,
    TransformerBlock,
    conv2d,
    gelu,
    upsample2x,
    upsampled_conv,
)

B, T, S, C = 2, 3, 32, 3
TINY = {
    "image_size": S,
    "channels": C,
    "history": T,
    "patch": 8,
    "width": 32,
    "spatial_depth": 1,
    "temporal_depth": 2,
    "heads": 2,
    "motion_channels": (8, 16, 32),
    "decoder_channels": (32, 16, 8),
    "dropout": 0.1,
}
GRID, TOKENS, K = S // 8, (S // 8) ** 2, 32
FULL = {
    "image_size": 224,
    "channels": 3,
    "history": 4,
    "patch": 16,
    "width": 256,
    "spatial_depth": 4,
    "temporal_depth": 2,
    "heads": 8,
    "motion_channels": (32, 64, 128, 256),
    "decoder_channels": (256, 128, 64, 32),
}
RULES = (("embed", "fsdp"), ("conv_out", "fsdp"), ("mlp", None), ("heads", None), ("conv_in", None))


def rbg_key(seed: int) -> jax.Array:
    """An "rbg" key: XLA:CPU compiles threefry slowly (~0.3 s per random shape), which made
    building the tiny model take ~11 s instead of ~4 s. The model is PRNG-agnostic."""
    return jax.random.key(seed, impl="rbg")


def rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(rbg_key(seed))


def shape_of(x: jax.Array | jax.ShapeDtypeStruct) -> tuple[tuple[int, ...], jnp.dtype]:
    return tuple(x.shape), x.dtype


@pytest.fixture(scope="module")
def model() -> Predictor:
    return Predictor(**TINY, rngs=rngs(0))


@pytest.fixture(scope="module")
def inputs() -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(rbg_key(1))
    frames = jax.random.uniform(k1, (B, T, S, S, C), minval=-1.0, maxval=1.0)
    flows = jax.random.normal(k2, (B, T, S, S, 2))
    return frames, flows


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, state: nnx.State, frames: jax.Array, flows: jax.Array):
    """The trainer's pattern: a pure function of (graphdef, state, inputs)."""
    return nnx.merge(graphdef, state)(frames, flows)


# --- layers -----------------------------------------------------------------------------------


# The layer tests use the tiny model's shapes (width 32, [B·T, N, D] spatial tokens, [B·N, T, D]
# temporal ones, ...), so their eagerly compiled ops are reused by the model tests.
D = 32


def test_attention_shapes_and_causal_mask():
    attn = MultiHeadAttention(D, 2, rngs=rngs(0))
    x = jax.random.normal(rbg_key(0), (B * T, TOKENS, D))
    context = jax.random.normal(rbg_key(1), (B, T * TOKENS, D))
    assert attn(x).shape == (B * T, TOKENS, D)
    assert attn(x[:B], context).shape == (B, TOKENS, D)  # cross-attention
    steps = jax.random.normal(rbg_key(2), (B * TOKENS, T, D))
    causal = attn(steps, causal=True)
    changed = attn(steps.at[:, 1].add(1.0), causal=True)
    np.testing.assert_allclose(causal[:, :1], changed[:, :1], atol=1e-6)
    assert not np.allclose(causal[:, 1:], changed[:, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(D, 3, rngs=rngs(0))


def test_transformer_block_shape_and_dropout():
    block = TransformerBlock(D, 2, 4.0, dropout=0.5, rngs=rngs(0))
    x = jax.random.normal(rbg_key(0), (B * T, TOKENS, D))
    y = block(x)
    assert y.shape == (B * T, TOKENS, D)
    np.testing.assert_array_equal(y, block(x))  # no rngs: deterministic
    key = rbg_key(3)
    dropped = block(x, rngs=nnx.Rngs(dropout=key))
    assert not np.allclose(dropped, y)
    np.testing.assert_array_equal(dropped, block(x, rngs=nnx.Rngs(dropout=key)))


@pytest.mark.parametrize(("kernel_time", "stride", "size"), [(3, 2, S), (3, 1, 10), (2, 1, 10)])
def test_temporal_conv_taps_equal_native(kernel_time, stride, size):
    kwargs = {"kernel_time": kernel_time, "stride_space": stride}
    taps = TemporalConv(2, 8, impl="taps", **kwargs, rngs=rngs(0))
    native = TemporalConv(2, 8, impl="native", **kwargs, rngs=rngs(1))
    nnx.update(native, nnx.state(taps, nnx.Param))
    x = jax.random.normal(rbg_key(0), (B, T, size, size, 2))
    y = taps(x)
    assert y.shape == (B, T, size // stride, size // stride, 8)
    np.testing.assert_allclose(y, native(x), atol=1e-5)
    # The gradients the trainer takes: of the input, the kernel and the bias.
    target = jax.random.normal(rbg_key(1), y.shape)

    def grads(conv):
        graph, params = nnx.split(conv)
        loss = lambda p, x: jnp.sum((nnx.merge(graph, p)(x) - target) ** 2)  # noqa: E731
        return jax.tree.leaves(jax.grad(loss, (0, 1))(params, x))

    for got, expected in zip(grads(taps), grads(native), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4 * float(jnp.abs(expected).max()))
    with pytest.raises(ValueError, match="impl"):
        TemporalConv(2, 8, impl="fft", rngs=rngs(0))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_upsampled_conv_is_upsample_then_conv_with_its_gradients(dtype):
    """The small-grid form of a 3×3 conv after nearest ×2 upsampling gives the outputs and
    gradients (input, kernel, bias) of the two steps, on a non-square grid, so that every
    border row and column and all four phases are compared."""
    conv = conv2d(5, 6, dtype=dtype, rngs=rngs(0))
    conv.bias[...] = jax.random.normal(rbg_key(1), conv.bias.shape)
    graph, params = nnx.split(conv)
    x = jax.random.normal(rbg_key(0), (2, 3, 4, 5))
    target = jax.random.normal(rbg_key(2), (2, 6, 8, 6))

    def loss(form, params, x):
        y = form(nnx.merge(graph, params), x).astype(jnp.float32)
        return jnp.sum((y - target) ** 2), y

    two_steps = functools.partial(loss, lambda c, x: c(upsample2x(x)))
    small_grid = functools.partial(loss, upsampled_conv)
    (_, expected), expected_grads = jax.value_and_grad(two_steps, (0, 1), has_aux=True)(params, x)
    (_, got), grads = jax.value_and_grad(small_grid, (0, 1), has_aux=True)(params, x)
    tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
    assert got.shape == (2, 6, 8, 6)
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=tolerance * float(jnp.abs(b).max()))
    with pytest.raises(ValueError, match="3×3"):
        upsampled_conv(conv2d(5, 6, kernel_size=1, dtype=dtype, rngs=rngs(0)), x)


def test_gelu_is_the_exact_gelu_with_its_derivative():
    """The model's GELU is x·Φ(x): PyTorch's `F.gelu` (the erf form the paper's code runs) and
    `jax.nn.gelu(approximate=False)` (the erfc form), values and derivatives within 1e-6 in
    float32 over [-8, 8], where the tanh approximation is 4.7e-4 off; bf16 within its
    rounding."""
    torch = pytest.importorskip("torch")
    x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float32)
    slope = jax.vmap(jax.grad(gelu))(x)
    exact = jax.nn.gelu(x, approximate=False)
    exact_slope = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(gelu(x), exact, rtol=0, atol=1e-6)
    np.testing.assert_allclose(slope, exact_slope, rtol=0, atol=1e-6)
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    torch.nn.functional.gelu(tx).sum().backward()
    reference = torch.nn.functional.gelu(tx).detach().numpy()
    np.testing.assert_allclose(gelu(x), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(slope, tx.grad.numpy(), rtol=0, atol=1e-6)
    assert float(jnp.abs(jax.nn.gelu(x, approximate=True) - exact).max()) > 1e-4  # The bar bites.
    half = gelu(x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), exact, rtol=2e-2, atol=2e-2)


def test_conv_decoder_shape():
    decoder = ConvDecoder(D, (32, 16, 8), C, rngs=rngs(0))
    assert decoder(jnp.zeros((B, GRID, GRID, D))).shape == (B, S, S, C)


# --- predictor ----------------------------------------------------------------------------------


def test_models_mapping():
    assert {"predictor": Predictor, "motion_mae": MotionMae, "mdsf": Mdsf, "aadc": Aadc} == MODELS


def test_method_shapes(model, inputs):
    frames, flows = inputs
    f32 = jnp.float32
    tokens = jax.eval_shape(model.encode_frames, frames)
    assert shape_of(tokens) == ((B, T, TOKENS, 32), f32)
    assert shape_of(jax.eval_shape(model.temporal, tokens)) == ((B, T, TOKENS, 32), f32)
    motion = jax.eval_shape(model.encode_motion, flows)
    assert shape_of(motion) == ((B, T, GRID, GRID, K), f32)
    appearance = jax.ShapeDtypeStruct((B, TOKENS, 32), f32)
    frame, flow = jax.eval_shape(model.decode, appearance, motion)
    assert shape_of(frame) == ((B, S, S, C), f32)
    assert shape_of(flow) == ((B, S, S, 2), f32)
    out = jax.eval_shape(model, frames, flows)
    assert {k: shape_of(v) for k, v in out.items()} == {
        "frame": ((B, S, S, C), f32),
        "flow": ((B, S, S, 2), f32),
        "motion_features": ((B, T, GRID, GRID, K), f32),
        "appearance": ((B, TOKENS, 32), f32),
    }
    with pytest.raises(ValueError, match="frames must be"):
        jax.eval_shape(model, frames[:, :2], flows)


def test_spatial_per_frame_and_temporal_causal(model, inputs):
    """Changing every pixel of frame t changes spatial tokens at t only and temporal steps ≥ t."""
    frames, _ = inputs
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, frames):
        m = nnx.merge(graphdef, state)
        tokens = m.encode_frames(frames)
        return tokens, m.temporal(tokens)

    tokens, steps = encode(state, frames)
    t = 1
    tokens2, steps2 = encode(state, frames.at[:, t].set(-frames[:, t]))
    for other in (0, 2):
        np.testing.assert_allclose(tokens[:, other], tokens2[:, other], atol=1e-6)
    assert np.abs(tokens[:, t] - tokens2[:, t]).max() > 1e-2
    np.testing.assert_allclose(steps[:, :t], steps2[:, :t], atol=1e-6)
    assert np.abs(steps[:, t] - steps2[:, t]).max() > 1e-2


def test_jit_of_split_state_matches_eager_and_dropout(model, inputs):
    frames, flows = inputs
    eager = model(frames, flows)
    graphdef, state = nnx.split(model)
    jitted = forward(graphdef, state, frames, flows)
    for name in eager:
        np.testing.assert_allclose(jitted[name], eager[name], atol=1e-5, err_msg=name)
        assert jitted[name].dtype == jnp.float32
    assert np.abs(jitted["frame"]).max() <= 1.0

    @jax.jit
    def train_forward(state, key):
        m = nnx.merge(graphdef, state)
        return m(frames, flows, rngs=nnx.Rngs(dropout=key))["frame"]

    a, b = train_forward(state, rbg_key(1)), train_forward(state, rbg_key(2))
    assert not np.allclose(a, jitted["frame"])
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, train_forward(state, rbg_key(1)))


def test_gradcam_gradient_through_decode(model, inputs):
    """Grad-CAM is `jax.grad` of a pure function of the motion features."""
    frames, flows = inputs
    out = forward(*nnx.split(model), frames, flows)

    def score(motion_features):
        frame, flow = model.decode(out["appearance"], motion_features)
        return jnp.sum(frame**2) + jnp.sum(flow**2)

    grads = jax.jit(jax.grad(score))(out["motion_features"])
    assert grads.shape == out["motion_features"].shape
    assert np.isfinite(grads).all() and np.abs(grads).max() > 0


def test_bfloat16_compute_float32_params(model, inputs):
    bf16 = Predictor(**TINY, dtype=jnp.bfloat16, rngs=rngs(0))
    params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)
    out = forward(*nnx.split(bf16), *inputs)
    reference = forward(*nnx.split(model), *inputs)
    for name, value in out.items():
        assert value.dtype == jnp.float32, name
        assert np.isfinite(value).all(), name
    np.testing.assert_allclose(out["frame"], reference["frame"], atol=0.1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": 36}, "not divisible by patch"),
        ({"patch": 6, "image_size": 36}, "power of two"),
        ({"motion_channels": (8, 16)}, "motion_channels needs log2"),
        ({"decoder_channels": (8, 8, 8, 8)}, "decoder_channels needs log2"),
        ({"width": 33}, "width 33 is not divisible by heads 2"),
        ({"conv3d": "fft"}, "conv3d"),
        ({"dropout": 1.0}, "dropout"),
        ({"history": 0}, "history"),
    ],
)
def test_constructor_validation(change, message):
    with pytest.raises(ValueError, match=message):
        Predictor(**(TINY | change), rngs=rngs(0))


def test_logical_partitioning():
    """Every parameter has a logical axis per dimension; the rules give valid specs that shard
    the big matrices on "fsdp", and every sharded dimension of the full-size model divides 8."""
    full = nnx.eval_shape(lambda: Predictor(**FULL, rngs=rngs(0)))
    state = nnx.state(full, nnx.Param)
    with nnx.logical_axis_rules(RULES):
        specs = nnx.get_partition_spec(state)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    flat_params = dict(nnx.to_flat_state(state))
    flat_specs = dict(nnx.to_flat_state(specs))
    assert flat_params.keys() == flat_specs.keys()
    for path, param in flat_params.items():
        names = param.get_metadata().get("out_sharding")
        assert names is not None and len(names) == param.ndim, path
        spec = flat_specs[path].get_value()
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        jax.sharding.NamedSharding(mesh, spec)  # raises on a mesh axis used twice
        for dim, axis in zip(param.shape, spec, strict=False):
            assert axis is None or dim % 8 == 0, (path, param.shape, spec)
        is_head = "head" in map(str, path)
        if param.ndim >= 2 and not is_head:
            assert "fsdp" in spec, (path, spec)
