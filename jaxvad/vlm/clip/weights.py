"""Loading a local Hugging Face `CLIPModel` folder into a `ClipModel`.

The folder is what `save_pretrained` writes: `config.json` (read with
`transformers.CLIPConfig.from_pretrained`, offline) and the weights as `model.safetensors` or a
sharded `model.safetensors.index.json` + shards, read by `jaxvad.vlm.hf_weights` (safetensors
only: a folder with only `pytorch_model.bin` is an error; any float dtype becomes float32).

Every HF tensor name maps onto our parameters (`tensor_rules`): linear weights `[out, in]` become
kernels `[in, out]`, the patch convolution OIHW becomes HWIO, embeddings are copied, `logit_scale`
is a scalar. `*.position_ids` buffers are ignored.

Errors are `ClipWeightsError` (a ValueError) with a message that starts with the offending file or
folder: a missing folder, a missing or invalid config.json, no safetensors file, a shard named in
the index that is missing, a missing tensor (named), a tensor of the wrong shape (named, expected
and found shapes). Tensors that map onto nothing (e.g. a checkpoint's extra heads) are logged as
a warning. Everything is checked before anything is read, so an error leaves nothing half-loaded.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

from jaxvad.model.layers import Dtype
from jaxvad.vlm import hf_weights
from jaxvad.vlm.clip.model import ClipModel, ModelConfig
from jaxvad.vlm.hf_weights import Checkpoint, Path_, Rule, copy, linear, norm


class ClipWeightsError(ValueError):
    """A CLIP folder that cannot be loaded; the message starts with the file or folder."""


def _encoder(prefix: str, ours: Path_, layers: int, dim: int, mlp_dim: int) -> list[Rule]:
    """HF `CLIPEncoder` `{prefix}encoder.layers.{i}` → our `EncoderLayer`s at `(*ours, i)`."""
    rules = []
    for i in range(layers):
        hf, layer = f"{prefix}encoder.layers.{i}.", (*ours, i)
        rules += [
            *norm(f"{hf}layer_norm1", (*layer, "norm1"), dim),
            *linear(f"{hf}self_attn.q_proj", (*layer, "attention", "query"), dim, dim),
            *linear(f"{hf}self_attn.k_proj", (*layer, "attention", "key"), dim, dim),
            *linear(f"{hf}self_attn.v_proj", (*layer, "attention", "value"), dim, dim),
            *linear(f"{hf}self_attn.out_proj", (*layer, "attention", "out"), dim, dim),
            *norm(f"{hf}layer_norm2", (*layer, "norm2"), dim),
            *linear(f"{hf}mlp.fc1", (*layer, "fc1"), dim, mlp_dim),
            *linear(f"{hf}mlp.fc2", (*layer, "fc2"), mlp_dim, dim),
        ]
    return rules


def tensor_rules(config: ModelConfig) -> list[Rule]:
    """Every HF tensor the model needs, for `config`."""
    v, t, e = config.vision, config.text, config.projection_dim
    dv, dt, p = v.hidden_size, t.hidden_size, v.patch_size
    tokens = (v.image_size // p) ** 2 + 1
    vision, text = "vision_model.", "text_model."
    return [
        copy(f"{vision}embeddings.class_embedding", ("vision", "class_embedding"), (dv,)),
        _patch_conv(f"{vision}embeddings.patch_embedding.weight", dv, v.num_channels, p),
        copy(
            f"{vision}embeddings.position_embedding.weight",
            ("vision", "position_embedding"),
            (tokens, dv),
        ),
        *norm(f"{vision}pre_layrnorm", ("vision", "pre_norm"), dv),  # sic: HF's name
        *_encoder(vision, ("vision", "layers"), v.num_hidden_layers, dv, v.intermediate_size),
        *norm(f"{vision}post_layernorm", ("vision", "post_norm"), dv),
        *linear("visual_projection", ("vision", "projection"), dv, e, bias=False),
        copy(
            f"{text}embeddings.token_embedding.weight",
            ("text", "token_embedding", "embedding"),
            (t.vocab_size, dt),
        ),
        copy(
            f"{text}embeddings.position_embedding.weight",
            ("text", "position_embedding", "embedding"),
            (t.max_position_embeddings, dt),
        ),
        *_encoder(text, ("text", "layers"), t.num_hidden_layers, dt, t.intermediate_size),
        *norm(f"{text}final_layer_norm", ("text", "final_norm"), dt),
        *linear("text_projection", ("text", "projection"), dt, e, bias=False),
        copy("logit_scale", ("logit_scale",), ()),
    ]


def _patch_conv(name: str, dim: int, channels: int, patch: int) -> Rule:
    """The patch convolution's weight, OIHW → our HWIO kernel."""
    return Rule(
        name,
        (dim, channels, patch, patch),
        lambda a: {("vision", "patch_embed", "kernel"): a.transpose(2, 3, 1, 0)},
    )


def read_config(folder: str | Path) -> ModelConfig:
    """`folder/config.json`, read by `transformers.CLIPConfig` (no network)."""

    def load(path: Path) -> ModelConfig:
        return ModelConfig.from_hf(
            transformers.CLIPConfig.from_pretrained(path, local_files_only=True)
        )

    return hf_weights.read_config(folder, load, ClipWeightsError, "CLIP")


def load_state(folder: str | Path, config: ModelConfig) -> dict[Path_, np.ndarray]:
    """The parameters stored in `folder` for `config` → {parameter path: float32 array}.
    Raises ClipWeightsError (module docstring)."""
    return hf_weights.convert(Checkpoint(Path(folder), ClipWeightsError), tensor_rules(config))


def load_model(folder: str | Path, *, dtype: Dtype = jnp.float32) -> ClipModel:
    """The `ClipModel` of a local HF `CLIPModel` folder (module docstring); `dtype` is the
    compute dtype (parameters are float32)."""
    config = read_config(folder)
    arrays = load_state(folder, config)
    return hf_weights.assemble(lambda: ClipModel(config, dtype=dtype, rngs=nnx.Rngs(0)), arrays)
