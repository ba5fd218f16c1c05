"""Models: Flax NNX modules whose jitted use is a pure function of `nnx.split(model)`.

`MODELS` maps a config's model name to its class (an explicit mapping, so "go to definition"
works); every class takes typed keyword arguments and `rngs`, never a config object:
`make_model` is the one place that reads a config. Shared blocks live in `layers`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxvad.model.predictor import Predictor

MODELS = {"predictor": Predictor}


def make_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> nnx.Module:
    """The model of `config.model` for frames of `config.data` and `config.history` past frames."""
    settings = {k: v for k, v in config.model.items() if k != "name"}
    return MODELS[config.model.name](
        image_size=config.data.size,
        channels=config.data.channels,
        history=config.history,
        **settings,
        rngs=rngs,
    )


def model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Stored batch → model space: frames uint8 → [-1, 1] float32, flows float16 → float32."""
    frames = lambda x: x.astype(jnp.float32) / 127.5 - 1.0  # noqa: E731
    return {
        "frames": frames(batch["frames"]),
        "flows": batch["flows"].astype(jnp.float32),
        "target_frame": frames(batch["target_frame"]),
        "target_flow": batch["target_flow"].astype(jnp.float32),
    }


__all__ = ["MODELS", "Predictor", "make_model", "model_inputs"]
