"""Reading a Hugging Face folder's safetensors into an NNX model, for the BLIP and CLIP ports.

The folder is what `save_pretrained` writes: `model.safetensors`, or a sharded
`model.safetensors.index.json` + shards. Only safetensors are read, never pickles: a folder with
only `pytorch_model.bin` is an error (convert it with `save_pretrained(safe_serialization=True)`).
Tensors of any float dtype (bfloat16 included) become float32 arrays.

A port lists every HF tensor its model needs as a `Rule` (name, shape, conversion to our
parameters: `linear`, `norm`, `copy` build the common ones); `convert` checks them all against the
folder's headers before reading anything, so an error leaves nothing half-loaded, and `assemble`
puts the arrays into the model without a random init. Errors are raised as the port's own
ValueError subclass, with a message that starts with the offending file or folder: no
safetensors file, an unreadable file, a shard named in the index that is missing, a missing tensor
(named), a tensor of the wrong shape (named, expected and found shapes). Tensors that map onto
nothing are logged as a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

Path_ = tuple[str | int, ...]  # a parameter's path in the model's state
ModuleT = TypeVar("ModuleT", bound=nnx.Module)
T = TypeVar("T")


class Rule(NamedTuple):
    """HF tensor `name` of shape `shape`, and how it becomes our parameters."""

    name: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], dict[Path_, np.ndarray]]


def linear(
    name: str, ours: Path_, fan_in: int, fan_out: int, *, bias: bool = True
) -> Iterator[Rule]:
    """An `nn.Linear`: weight `[out, in]` → kernel `[in, out]`, and its bias if it has one."""
    yield Rule(f"{name}.weight", (fan_out, fan_in), lambda a: {(*ours, "kernel"): a.T})
    if bias:
        yield Rule(f"{name}.bias", (fan_out,), lambda a: {(*ours, "bias"): a})


def norm(name: str, ours: Path_, dim: int) -> Iterator[Rule]:
    """An `nn.LayerNorm`: weight → scale, bias → bias."""
    yield Rule(f"{name}.weight", (dim,), lambda a: {(*ours, "scale"): a})
    yield Rule(f"{name}.bias", (dim,), lambda a: {(*ours, "bias"): a})


def copy(name: str, ours: Path_, shape: tuple[int, ...], *, drop: int = 0) -> Rule:
    """The same values, without the first `drop` (1-sized) axes of HF's `shape`."""
    return Rule(name, shape, lambda a: {ours: a.reshape(shape[drop:])})


class Checkpoint:
    """The tensors of a folder's safetensors file(s): names and shapes from the headers, values
    read on demand. `error` is the port's ValueError subclass, raised for every problem."""

    def __init__(self, folder: Path, error: type[ValueError]):
        self.error = error
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
                raise error(f"{file}: not a readable safetensors file: {e}") from e

    def _files(self, folder: Path) -> list[Path]:
        if (folder / SINGLE_FILE).is_file():
            return [folder / SINGLE_FILE]
        index = folder / INDEX_FILE
        if not index.is_file():
            pickles = sorted(p.name for p in folder.glob("*.bin"))
            found = f" (only {', '.join(pickles)}: pickles are not read)" if pickles else ""
            raise self.error(
                f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}{found}; safetensors weights are "
                "needed, e.g. from save_pretrained(folder, safe_serialization=True)"
            )
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise self.error(f"{index}: not a safetensors index ({e!r})") from e
        for shard in shards:
            if not (folder / shard).is_file():
                raise self.error(f"{index}: shard {shard} named in the index is missing")
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


def convert(
    checkpoint: Checkpoint,
    rules: Iterable[Rule],
    *,
    aliases: Mapping[str, str] | None = None,
    unused: Iterable[str] = (),
) -> dict[Path_, np.ndarray]:
    """Checks that every rule's tensor is stored with its shape, then reads and converts them →
    {parameter path: float32 array}. `aliases`: {name in a rule: the stored tensor to read
    instead}; `unused`: stored tensors known to be redundant, not worth a warning
    (`*.position_ids` buffers never are)."""
    rules, aliases = list(rules), dict(aliases or {})
    for rule in rules:
        name = aliases.get(rule.name, rule.name)
        if name not in checkpoint.shapes:
            raise checkpoint.error(f"{checkpoint.source()}: tensor {name} is missing")
        if checkpoint.shapes[name] != rule.shape:
            raise checkpoint.error(
                f"{checkpoint.where[name]}: tensor {name} has shape "
                f"{list(checkpoint.shapes[name])}, expected {list(rule.shape)} for this config.json"
            )
    used = {aliases.get(rule.name, rule.name) for rule in rules} | set(unused)
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
    return state


def read_config(
    folder: str | Path, load: Callable[[Path], T], error: type[ValueError], model: str
) -> T:
    """`load(folder)` of `folder/config.json` (e.g. `ModelConfig.from_hf` of the HF config
    class's `from_pretrained`), its failures raised as `error` naming the file; `model`: the
    port's name in the messages."""
    folder = Path(folder)
    if not folder.is_dir():
        raise error(f"{folder}: no such folder")
    path = folder / "config.json"
    if not path.is_file():
        raise error(f"{path}: missing (a {model} model folder needs its config.json)")
    try:
        return load(folder)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise error(f"{path}: not a valid {model} config: {_one_line(e)}") from e


def load_processor(folder: str | Path, processor_class: Any, error: type[ValueError]) -> Any:
    """`processor_class.from_pretrained` of the local `folder` (no network), its failures
    raised as `error` naming the folder and the class."""
    try:
        return processor_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        name = processor_class.__name__
        raise error(f"{folder}: cannot load the {name}: {_one_line(e)}") from e


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def assemble(build: Callable[[], ModuleT], arrays: Mapping[Path_, np.ndarray]) -> ModuleT:
    """The module `build()` makes, holding `arrays` (every parameter, by path), built abstractly
    (`nnx.eval_shape`: no random init)."""
    graphdef, shapes = nnx.split(nnx.eval_shape(build))
    flat = []
    for path, variable in nnx.to_flat_state(shapes):
        array = arrays[path]
        expected = variable.get_value().shape
        assert array.shape == expected, f"{path}: {array.shape} != {expected}"
        flat.append((path, variable.replace(jnp.asarray(array))))
    assert len(flat) == len(arrays), set(arrays) - {path for path, _ in flat}
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
