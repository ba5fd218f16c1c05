"""A tiny randomly initialised CLIP saved as a local Hugging Face `CLIPModel` folder, written
without PyTorch: the embedded default of the weakly supervised synthetic set (`configs/
synthetic_weak.py`), whose snippet features and class-name embeddings need a CLIP and where no
pretrained one is at hand.

The folder holds what `Clip.load` reads: `config.json` (`transformers.CLIPConfig`), the
weights as `model.safetensors` under HF's tensor names (every tensor the port's loader maps,
`weights.tensor_rules`, drawn at random), a character-level CLIP BPE tokenizer (the 26 lower-case
letters, each also as a word end, `<|startoftext|>`, `<|endoftext|>`: any lower-case text
tokenizes) and a CLIP image processor. The draws: LayerNorm weights 1 + N(0, 0.1²), biases
N(0, 0.02²), every other tensor N(0, (std·fan_in^-½)²) along its last axis, std = `TINY`'s
`init_std` (larger than CLIP's own, so that random embeddings differ from one another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from jaxvad.vlm.clip.weights import read_config, tensor_rules

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TINY: dict[str, Any] = {  # CLIPVisionConfig / CLIPTextConfig fields and CLIPConfig's
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 4,
    },
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 48,
    },
    "projection_dim": 32,
    "init_std": 2.0,
}


def _tokenizer() -> Any:
    import transformers

    tokens = [*LETTERS, *(c + "</w>" for c in LETTERS), "<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def _draw(name: str, shape: tuple[int, ...], rng: np.random.Generator, std: float) -> np.ndarray:
    if "norm" in name and name.endswith(".weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias"):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if name == "logit_scale":
        return np.asarray(np.log(1 / 0.07), np.float32)
    fan_in = shape[-1] if len(shape) > 1 else 1
    if name.endswith("patch_embedding.weight"):  # OIHW
        fan_in = int(np.prod(shape[1:]))
    return (std / np.sqrt(fan_in) * rng.standard_normal(shape)).astype(np.float32)


def write_random_clip(folder: str | Path, *, seed: int = 0, spec: dict[str, Any] = TINY) -> Path:
    """Writes a random CLIP of `spec` (default `TINY`) into `folder` (created); returns it.
    Deterministic from `seed`."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    config = transformers.CLIPConfig(
        vision_config=spec["vision"],
        text_config=dict(
            spec["text"],
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        projection_dim=spec["projection_dim"],
    )
    config.save_pretrained(folder)
    rng = np.random.default_rng(seed)
    tensors = {
        rule.name: _draw(rule.name, rule.shape, rng, spec["init_std"])
        for rule in tensor_rules(read_config(folder))
    }
    save_file(tensors, str(folder / "model.safetensors"))
    size = spec["vision"]["image_size"]
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder
