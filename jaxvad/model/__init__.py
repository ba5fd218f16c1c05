"""Models: Flax NNX detectors whose jitted use is a pure function of `nnx.split(model)`.

`MODELS` maps a config's model name to its class (an explicit mapping, so "go to definition"
works); every class is a `VadModel` (the interface the trainer, `jaxvad.evaluate` and
`jaxvad.explain` use: see `interface`) and takes typed keyword arguments and `rngs`, never a
config object: `make_model` is the one place that reads a config. Shared blocks live in
`layers`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxvad.data.weak_input import CLASSES, clip_folder, feature_width
from jaxvad.model.aadc import Aadc
from jaxvad.model.interface import Head, Maps, VadModel
from jaxvad.model.mdsf import Mdsf
from jaxvad.model.motion_mae import MotionMae
from jaxvad.model.predictor import Predictor

MODELS: dict[str, type[VadModel]] = {
    "predictor": Predictor,
    "motion_mae": MotionMae,
    "mdsf": Mdsf,
    "aadc": Aadc,
}
# From `image_size(config)`, config.data.channels, config.history; for the models of weakly
# labelled videos, the dataset's class names, config.loss.k and the features' width
# (`data_arguments`).
DATA_ARGUMENTS = ("image_size", "channels", "history", "classes", "k", "feature_width")


def model_settings(name: str) -> tuple[str, ...]:
    """The `config.model` fields model `name` takes: its constructor's keyword arguments other
    than the data's (`DATA_ARGUMENTS`) and `rngs`."""
    parameters = inspect.signature(MODELS[name].__init__).parameters
    return tuple(p for p in parameters if p not in ("self", "rngs", *DATA_ARGUMENTS))


def image_size(config: ml_collections.ConfigDict) -> int:
    """The side of the model's square inputs: the stored frames' (`config.data.size`), or
    the object crops' (`config.objects.size`) when the model trains on object samples."""
    return config.objects.size if config.objects.samples else config.data.size


def make_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> VadModel:
    """The model of `config.model` for inputs of `image_size(config)` with the channels of
    `config.data` (and `config.history` past frames, for the models that read them)."""
    name = config.model.name
    settings = {k: v for k, v in config.model.items() if k != "name"}
    takes = model_settings(name)
    unknown = sorted(set(settings) - set(takes))
    if unknown:
        raise ValueError(
            f"config.model holds {unknown}, which model {name!r} does not take (it takes "
            f"{list(takes)}); switch models with jaxvad.config.set_model or "
            "--config=FILE:<model name>"
        )
    if "clip" in settings:  # A CLIP folder; empty: the synthetic set's tiny random one.
        settings["clip"] = str(clip_folder(settings["clip"], config.data.root))
    return MODELS[name](**data_arguments(config, name), **settings, rngs=rngs)


def data_arguments(config: ml_collections.ConfigDict, name: str) -> dict[str, object]:
    """The `DATA_ARGUMENTS` model `name`'s constructor takes, from `config`."""
    values = {
        "image_size": lambda: image_size(config),
        "channels": lambda: config.data.channels,
        "history": lambda: config.history,  # Only models that read past frames take T.
        "classes": lambda: CLASSES[config.data.dataset],
        "k": lambda: config.loss.k,
        "feature_width": lambda: feature_width(
            clip_folder(config.model.clip, config.data.root), config.data.objects
        ),
    }
    takes = inspect.signature(MODELS[name].__init__).parameters
    return {key: value() for key, value in values.items() if key in takes}


def model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Stored batch → model space: frames uint8 → [-1, 1] float32, flows float16 → float32.
    A batch of weakly labelled videos (`features`, `jaxvad.data.weak_input`) is already in
    model space and passes unchanged."""
    if "features" in batch:
        return dict(batch)
    frames = lambda x: x.astype(jnp.float32) / 127.5 - 1.0  # noqa: E731
    return {
        "frames": frames(batch["frames"]),
        "flows": batch["flows"].astype(jnp.float32),
        "target_frame": frames(batch["target_frame"]),
        "target_flow": batch["target_flow"].astype(jnp.float32),
    }


__all__ = [
    "MODELS",
    "Aadc",
    "Head",
    "Maps",
    "Mdsf",
    "MotionMae",
    "Predictor",
    "VadModel",
    "data_arguments",
    "image_size",
    "make_model",
    "model_inputs",
    "model_settings",
]
