"""The PyTorch twin of `jaxvad.bench.torch_twin` is a twin: the same parameter count as the
predictor it is compared with, and the same loss terms as `jaxvad.losses`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import load_config
from flax import nnx

from jaxvad import losses, model
from jaxvad.bench import torch_twin


@pytest.mark.parametrize("variant", ["tiny", None])
def test_the_twin_has_the_predictors_parameter_count(variant):
    config = load_config("synthetic", variant)
    shapes = nnx.state(nnx.eval_shape(lambda: model.make_model(config, rngs=nnx.Rngs(0))))
    jax_count = sum(x.size for x in jax.tree.leaves(shapes))
    twin = torch_twin.make_twin(config)
    assert sum(p.numel() for p in twin.parameters()) == jax_count


def test_the_twins_loss_terms_are_the_trainers():
    rng = np.random.default_rng(0)
    frame, target_frame = rng.uniform(-1, 1, (2, 2, 32, 32, 1)).astype(np.float32)
    flow, target_flow = rng.normal(size=(2, 2, 32, 32, 2)).astype(np.float32)
    expected = losses.loss_terms(
        *map(jnp.asarray, (frame, flow, target_frame, target_flow)), vgg=None
    )

    def nchw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    got = torch_twin.twin_loss_terms(
        nchw(frame), nchw(flow), nchw(target_frame), nchw(target_flow), torch_twin._ssim_filter()
    )
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert float(got[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), name
