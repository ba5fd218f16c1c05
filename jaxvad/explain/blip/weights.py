"""Loading a local Hugging Face `BlipForConditionalGeneration` folder into a `CaptionModel`.

The folder is what `save_pretrained` writes: `config.json` (read with
`transformers.BlipConfig.from_pretrained`, offline) and the weights as `model.safetensors` or a
sharded `model.safetensors.index.json` + shards. Only safetensors are read, never pickles: a folder
with only `pytorch_model.bin` is an error (convert it with `save_pretrained(safe_serialization=
True)`). Tensors of any float dtype (bfloat16 included) become float32 parameters.

Every HF tensor name maps onto our parameters (`_rules`): linear weights `[out, in]` are
transposed to kernels `[in, out]`, the patch convolution OIHW becomes HWIO, the vision `qkv`
weight `[3·D, D]` is split into query/key/value (HF's reshape `(3, heads, head_dim)` order), the
class and position embeddings lose their leading 1-axes. `*.position_ids` buffers are ignored.

Tied LM head, as HF's `tie_weights` decides it when loading (tied when the top-level or the text
config sets `tie_word_embeddings`):

* tied: the output matrix is the word embeddings; a stored `cls.predictions.decoder.weight` equal
  to them is redundant (old checkpoints store both), one that differs unties the head (HF warns
  and keeps both); with only the decoder matrix stored, it also serves as the word embeddings.
  The output bias is `cls.predictions.decoder.bias` if stored, else `cls.predictions.bias`.
* untied: `cls.predictions.decoder.weight` and `.decoder.bias` are both required.

Errors are `BlipWeightsError` (a ValueError) with a message that starts with the offending file or
folder: a missing folder, a missing or invalid config.json, no safetensors file, a shard named in
the index that is missing, a missing tensor (named), a tensor of the wrong shape (named, expected
and found shapes). Tensors that map onto nothing are logged as a warning. Everything is checked
and converted before the model is assembled, so an error leaves nothing half-loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx
from safetensors import SafetensorError, safe_open

from jaxvad.explain.blip.model import CaptionModel, Dtype, ModelConfig

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HEAD = "text_decoder.cls.predictions."
WORD_EMBEDDINGS = "text_decoder.bert.embeddings.word_embeddings.weight"
DECODER_WEIGHT = f"{HEAD}decoder.weight"
DECODER_BIAS = f"{HEAD}decoder.bias"
BIAS = f"{HEAD}bias"  # the tied head's bias (HF ties decoder.bias to it)

Path_ = tuple[str | int, ...]  # a parameter's path in the model's state


class BlipWeightsError(ValueError):
    """A BLIP folder that cannot be loaded; the message starts with the file or folder."""


class _Rule(NamedTuple):
    """HF tensor `name` of shape `shape`, and how it becomes our parameters."""

    name: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], dict[Path_, np.ndarray]]


def _linear(name: str, ours: Path_, fan_in: int, fan_out: int) -> Iterator[_Rule]:
    yield _Rule(f"{name}.weight", (fan_out, fan_in), lambda a: {(*ours, "kernel"): a.T})
    yield _Rule(f"{name}.bias", (fan_out,), lambda a: {(*ours, "bias"): a})


def _norm(name: str, ours: Path_, dim: int) -> Iterator[_Rule]:
    yield _Rule(f"{name}.weight", (dim,), lambda a: {(*ours, "scale"): a})
    yield _Rule(f"{name}.bias", (dim,), lambda a: {(*ours, "bias"): a})


def _qkv(name: str, ours: Path_, dim: int) -> Iterator[_Rule]:
    """HF `BlipAttention.qkv`: rows `[q; k; v]` (its reshape `(3, heads, head_dim)`)."""
    parts = ("query", "key", "value")

    def weight(a: np.ndarray) -> dict[Path_, np.ndarray]:
        weights = a.reshape(3, dim, dim)
        return {(*ours, p, "kernel"): w.T for p, w in zip(parts, weights, strict=True)}

    def bias(a: np.ndarray) -> dict[Path_, np.ndarray]:
        return {(*ours, p, "bias"): b for p, b in zip(parts, a.reshape(3, dim), strict=True)}

    yield _Rule(f"{name}.weight", (3 * dim, dim), weight)
    yield _Rule(f"{name}.bias", (3 * dim,), bias)


def _copy(name: str, ours: Path_, shape: tuple[int, ...], *, drop: int = 0) -> _Rule:
    """The same values, without the first `drop` (1-sized) axes of HF's `shape`."""
    return _Rule(name, shape, lambda a: {ours: a.reshape(shape[drop:])})


def _rules(config: ModelConfig) -> list[_Rule]:
    """Every HF tensor the model needs, for `config` (its `tie_word_embeddings` decides whether
    the decoder matrix is one). The output bias is listed as the tied head's
    `cls.predictions.bias`; `_resolve_head` redirects it to `decoder.bias` where that counts."""
    v, t = config.vision, config.text
    dv, dt, p = v.hidden_size, t.hidden_size, v.patch_size
    tokens = (v.image_size // p) ** 2 + 1
    vision = "vision_model."
    rules = [
        _copy(
            f"{vision}embeddings.class_embedding", ("vision", "class_embedding"), (1, 1, dv), drop=2
        ),
        _copy(
            f"{vision}embeddings.position_embedding",
            ("vision", "position_embedding"),
            (1, tokens, dv),
            drop=1,
        ),
        _Rule(
            f"{vision}embeddings.patch_embedding.weight",
            (dv, 3, p, p),
            lambda a: {("vision", "patch_embed", "kernel"): a.transpose(2, 3, 1, 0)},
        ),
        _copy(f"{vision}embeddings.patch_embedding.bias", ("vision", "patch_embed", "bias"), (dv,)),
        *_norm(f"{vision}post_layernorm", ("vision", "post_norm"), dv),
    ]
    for i in range(v.num_hidden_layers):
        hf, ours = f"{vision}encoder.layers.{i}.", ("vision", "layers", i)
        rules += [
            *_qkv(f"{hf}self_attn.qkv", (*ours, "attention"), dv),
            *_linear(f"{hf}self_attn.projection", (*ours, "attention", "out"), dv, dv),
            *_norm(f"{hf}layer_norm1", (*ours, "norm1"), dv),
            *_linear(f"{hf}mlp.fc1", (*ours, "fc1"), dv, v.intermediate_size),
            *_linear(f"{hf}mlp.fc2", (*ours, "fc2"), v.intermediate_size, dv),
            *_norm(f"{hf}layer_norm2", (*ours, "norm2"), dv),
        ]
    bert = "text_decoder.bert."
    rules += [
        _copy(WORD_EMBEDDINGS, ("text", "word_embeddings", "embedding"), (t.vocab_size, dt)),
        _copy(
            f"{bert}embeddings.position_embeddings.weight",
            ("text", "position_embeddings", "embedding"),
            (t.max_position_embeddings, dt),
        ),
        *_norm(f"{bert}embeddings.LayerNorm", ("text", "embed_norm"), dt),
        *_linear(f"{HEAD}transform.dense", ("text", "head_dense"), dt, dt),
        *_norm(f"{HEAD}transform.LayerNorm", ("text", "head_norm"), dt),
    ]
    rules.append(_copy(BIAS, ("text", "decoder_bias"), (t.vocab_size,)))  # see _resolve_head
    if not t.tie_word_embeddings:
        rules.append(
            _Rule(
                DECODER_WEIGHT, (t.vocab_size, dt), lambda a: {("text", "decoder", "kernel"): a.T}
            )
        )
    for i in range(t.num_hidden_layers):
        hf, ours = f"{bert}encoder.layer.{i}.", ("text", "layers", i)
        for block, attention, norm, context in (
            ("attention", "self_attention", "self_norm", dt),
            ("crossattention", "cross_attention", "cross_norm", t.encoder_hidden_size),
        ):
            rules += [
                *_linear(f"{hf}{block}.self.query", (*ours, attention, "query"), dt, dt),
                *_linear(f"{hf}{block}.self.key", (*ours, attention, "key"), context, dt),
                *_linear(f"{hf}{block}.self.value", (*ours, attention, "value"), context, dt),
                *_linear(f"{hf}{block}.output.dense", (*ours, attention, "out"), dt, dt),
                *_norm(f"{hf}{block}.output.LayerNorm", (*ours, norm), dt),
            ]
        rules += [
            *_linear(f"{hf}intermediate.dense", (*ours, "intermediate"), dt, t.intermediate_size),
            *_linear(f"{hf}output.dense", (*ours, "output"), t.intermediate_size, dt),
            *_norm(f"{hf}output.LayerNorm", (*ours, "output_norm"), dt),
        ]
    return rules


def read_config(folder: str | Path) -> ModelConfig:
    """`folder/config.json`, read by `transformers.BlipConfig` (no network)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BlipWeightsError(f"{folder}: no such folder")
    path = folder / "config.json"
    if not path.is_file():
        raise BlipWeightsError(f"{path}: missing (a BLIP model folder needs its config.json)")
    try:
        hf_config = transformers.BlipConfig.from_pretrained(folder, local_files_only=True)
        return ModelConfig.from_hf(hf_config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        message = " ".join(str(e).split())
        raise BlipWeightsError(f"{path}: not a valid BLIP config: {message}") from e


class _Checkpoint:
    """The tensors of a folder's safetensors file(s): names and shapes from the headers, values
    read on demand."""

    def __init__(self, folder: Path):
        self.files = self._files(folder)
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in self.files:
            try:
                with safe_open(file, framework="np") as f:
                    for name in f.keys():  # noqa: SIM118  (a safe_open handle is not a dict)
                        self.where[name] = file
                        self.shapes[name] = tuple(f.get_slice(name).get_shape())
            except (SafetensorError, OSError) as e:
                raise BlipWeightsError(f"{file}: not a readable safetensors file: {e}") from e

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        if (folder / SINGLE_FILE).is_file():
            return [folder / SINGLE_FILE]
        index = folder / INDEX_FILE
        if not index.is_file():
            pickles = sorted(p.name for p in folder.glob("*.bin"))
            found = f" (only {', '.join(pickles)}: pickles are not read)" if pickles else ""
            raise BlipWeightsError(
                f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}{found}; safetensors weights are "
                "needed, e.g. from save_pretrained(folder, safe_serialization=True)"
            )
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BlipWeightsError(f"{index}: not a safetensors index ({e!r})") from e
        for shard in shards:
            if not (folder / shard).is_file():
                raise BlipWeightsError(f"{index}: shard {shard} named in the index is missing")
        return [folder / shard for shard in shards]

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as float32 (bfloat16, which numpy lacks, is read through JAX)."""
        with safe_open(self.where[name], framework="np") as f:
            if f.get_slice(name).get_dtype() != "BF16":
                return f.get_tensor(name).astype(np.float32)
        with safe_open(self.where[name], framework="flax") as f:
            return np.asarray(f.get_tensor(name).astype(jnp.float32))

    def source(self) -> str:
        """The file(s) to name in a message."""
        first = self.files[0]
        return str(first) if len(self.files) == 1 else str(first.parent / INDEX_FILE)


def _resolve_head(
    checkpoint: _Checkpoint, config: ModelConfig
) -> tuple[ModelConfig, dict[str, str]]:
    """HF's tying of the LM head (module docstring) → the config with the effective
    `tie_word_embeddings`, and aliases {tensor name in `_rules`: stored tensor name}."""
    stored = checkpoint.shapes
    if not config.text.tie_word_embeddings:
        return config, {BIAS: DECODER_BIAS}
    aliases = {BIAS: DECODER_BIAS} if DECODER_BIAS in stored else {}
    if DECODER_WEIGHT in stored and WORD_EMBEDDINGS not in stored:
        aliases[WORD_EMBEDDINGS] = DECODER_WEIGHT
    elif DECODER_WEIGHT in stored and (
        stored[DECODER_WEIGHT] != stored[WORD_EMBEDDINGS]
        or not np.array_equal(checkpoint.read(DECODER_WEIGHT), checkpoint.read(WORD_EMBEDDINGS))
    ):
        log.warning(
            "%s: %s differs from the word embeddings, so the LM head is not tied (as in "
            "transformers)",
            checkpoint.source(),
            DECODER_WEIGHT,
        )
        text = dataclasses.replace(config.text, tie_word_embeddings=False)
        config = dataclasses.replace(config, text=text)
    return config, aliases


def load_state(
    folder: str | Path, config: ModelConfig
) -> tuple[ModelConfig, dict[Path_, np.ndarray]]:
    """The parameters stored in `folder` for `config` → (the config with the head's effective
    tying, {parameter path: float32 array}). Raises BlipWeightsError (module docstring)."""
    checkpoint = _Checkpoint(Path(folder))
    config, aliases = _resolve_head(checkpoint, config)
    rules = _rules(config)
    for rule in rules:
        name = aliases.get(rule.name, rule.name)
        if name not in checkpoint.shapes:
            raise BlipWeightsError(f"{checkpoint.source()}: tensor {name} is missing")
        if checkpoint.shapes[name] != rule.shape:
            raise BlipWeightsError(
                f"{checkpoint.where[name]}: tensor {name} has shape "
                f"{list(checkpoint.shapes[name])}, expected {list(rule.shape)} for this config.json"
            )
    # The head's other tensors are redundant (tied) or unused by HF's forward (untied `bias`).
    used = {aliases.get(rule.name, rule.name) for rule in rules} | {BIAS, DECODER_WEIGHT}
    extra = sorted(n for n in checkpoint.shapes if n not in used and not n.endswith("position_ids"))
    if extra:
        log.warning(
            "%s: ignoring %d tensors that map onto nothing: %s",
            checkpoint.source(),
            len(extra),
            ", ".join(extra),
        )
    state: dict[Path_, np.ndarray] = {}
    for rule in rules:
        state.update(rule.convert(checkpoint.read(aliases.get(rule.name, rule.name))))
    return config, state


def assemble(config: ModelConfig, arrays: dict[Path_, np.ndarray], *, dtype: Dtype) -> CaptionModel:
    """A `CaptionModel` holding `arrays` (every parameter, by path), without a random init."""
    abstract = nnx.eval_shape(lambda: CaptionModel(config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, shapes = nnx.split(abstract)
    flat = []
    for path, variable in nnx.to_flat_state(shapes):
        array = arrays[path]
        expected = variable.get_value().shape
        assert array.shape == expected, f"{path}: {array.shape} != {expected}"
        flat.append((path, variable.replace(jnp.asarray(array))))
    assert len(flat) == len(arrays), set(arrays) - {path for path, _ in flat}
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_model(folder: str | Path, *, dtype: Dtype = jnp.float32) -> CaptionModel:
    """The `CaptionModel` of a local HF `BlipForConditionalGeneration` folder (module
    docstring); `dtype` is the compute dtype (parameters are float32)."""
    config, arrays = load_state(folder, read_config(folder))
    return assemble(config, arrays, dtype=dtype)
