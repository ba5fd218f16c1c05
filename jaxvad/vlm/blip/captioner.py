"""`Captioner`: BLIP captions of RGB images, the API the rest of jaxvad calls.

    captioner = Captioner.load("models/blip-image-captioning-base")  # a local HF folder
    texts = captioner.caption(images, beams=3, max_new_tokens=30)     # [B, H, W, 3] uint8 RGB

Preprocessing and decoding are transformers' own `BlipProcessor` from the folder (BLIP image
processor: bicubic resize to S×S, rescale, CLIP mean/std; the BERT tokenizer), so pixel values
and strings are those of the PyTorch pipeline. Generation is `generate.generate`, jitted once per
(batch size, beams, max_new_tokens, length_penalty, early_stopping): `caption(..., pad_to=N)`
pads smaller batches (e.g. the last one) to N images so that they reuse one compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

from jaxvad.vlm.blip import generate as generate_lib
from jaxvad.vlm.blip.model import CaptionModel, Dtype, ModelConfig
from jaxvad.vlm.blip.weights import BlipWeightsError, load_model
from jaxvad.vlm.hf_weights import load_processor


class Captioner:
    """A `CaptionModel` (split into graphdef and state), its jitted generation and, when loaded
    from a folder, its `transformers.BlipProcessor`."""

    def __init__(self, model: CaptionModel, processor: Any | None = None):
        self.config: ModelConfig = model.config
        self.graphdef, self.state = nnx.split(model)
        self.processor = processor
        self._generate = jax.jit(
            functools.partial(generate_lib.generate, self.graphdef),
            static_argnames=("beams", "max_new_tokens", "length_penalty", "early_stopping"),
        )

    @classmethod
    def load(cls, folder: str | Path, *, dtype: Dtype = jnp.float32) -> Captioner:
        """Model, weights and processor of a local HF `BlipForConditionalGeneration` folder
        (config.json, safetensors weights, tokenizer and preprocessor files); no network.
        Raises `BlipWeightsError` for a folder that cannot be loaded."""
        model = load_model(folder, dtype=dtype)
        processor = load_processor(folder, transformers.BlipProcessor, BlipWeightsError)
        _check_processor(folder, processor, model.config)
        return cls(model, processor)

    @classmethod
    def random(
        cls,
        config: transformers.BlipConfig | ModelConfig,
        seed: int = 0,
        *,
        dtype: Dtype = jnp.float32,
    ) -> Captioner:
        """A randomly initialised model for a `transformers.BlipConfig` (or a `ModelConfig`),
        without files or processor: `generate` works, `caption` raises."""
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_hf(config)
        return cls(CaptionModel(config, dtype=dtype, rngs=nnx.Rngs(seed)))

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (`[B, H, W, 3]` or a sequence of `[H, W, 3]` of any sizes) → pixel
        values `[B, S, S, 3]` float32 (channels last), by the folder's BLIP image processor."""
        processor = self._need_processor()
        pixels = processor.image_processor(
            list(images), return_tensors="np", input_data_format="channels_last"
        )["pixel_values"]
        return np.asarray(pixels, np.float32).transpose(0, 2, 3, 1)

    def generate(
        self,
        pixel_values: np.ndarray | jax.Array,
        *,
        beams: int = 1,
        max_new_tokens: int = 30,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
    ) -> np.ndarray:
        """pixel_values `[B, S, S, 3]` float32, channels last (`preprocess`; transpose a
        processor's `[B, 3, S, S]` output) → token ids `[B, 1 + n]` int32, n ≤ max_new_tokens,
        exactly HF's `generate(pixel_values, max_new_tokens=…, num_beams=beams)` (bos first,
        stop on sep, then padding; see `generate`)."""
        S = self.config.vision.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (S, S, 3):
            channels_first = pixel_values.ndim == 4 and pixel_values.shape[1] == 3
            hint = " (channels first? transpose to [B, S, S, 3])" if channels_first else ""
            raise ValueError(
                f"pixel_values must be [B, {S}, {S}, 3], got {list(pixel_values.shape)}{hint}"
            )
        tokens, length = self._generate(
            self.state,
            jnp.asarray(pixel_values, jnp.float32),
            beams=beams,
            max_new_tokens=max_new_tokens,
            length_penalty=float(length_penalty),
            early_stopping=early_stopping,
        )
        return np.asarray(tokens)[:, : int(length)]

    def caption(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        *,
        beams: int = 1,
        max_new_tokens: int = 30,
        pad_to: int | None = None,
    ) -> list[str]:
        """RGB uint8 images (`[B, H, W, 3]` or a sequence of `[H, W, 3]`) → B captions, decoded
        by the folder's tokenizer without special tokens (as HF's captioning example).

        pad_to: generate for a batch padded with blank images to this size (≥ B), so that batches
        of any size up to it share one compilation. Rows do not interact (a finished row is
        frozen while others run), so the captions are those of the unpadded batch.
        """
        pixels = self.preprocess(images)
        B = len(pixels)
        if pad_to is not None:
            if pad_to < B:
                raise ValueError(f"pad_to={pad_to} is smaller than the batch of {B} images")
            pixels = np.concatenate([pixels, np.zeros((pad_to - B, *pixels.shape[1:]), np.float32)])
        ids = self.generate(pixels, beams=beams, max_new_tokens=max_new_tokens)[:B]
        return self._need_processor().batch_decode(ids, skip_special_tokens=True)

    def _need_processor(self) -> Any:
        if self.processor is None:
            raise ValueError(
                "this Captioner has no tokenizer/image processor (built by Captioner.random); "
                "load one from a folder with Captioner.load to caption images"
            )
        return self.processor


def _check_processor(folder: str | Path, processor: Any, config: ModelConfig) -> None:
    """Raises BlipWeightsError if the processor cannot serve the model: another image size, or
    a tokenizer without the model's special ids (transformers silently builds a 5-token
    BertTokenizer when the tokenizer files are missing)."""
    size = processor.image_processor.size
    expected = config.vision.image_size
    if (size.get("height"), size.get("width")) != (expected, expected):
        raise BlipWeightsError(
            f"{folder}: the image processor resizes to {dict(size)}, the model expects "
            f"{expected}×{expected}"
        )
    text, tokenizer = config.text, processor.tokenizer
    ids = {"bos": text.bos_token_id, "sep": text.sep_token_id, "pad": text.pad_token_id}
    if tokenizer.sep_token_id != text.sep_token_id or max(
        i for i in ids.values() if i is not None
    ) >= len(tokenizer):
        raise BlipWeightsError(
            f"{folder}: the tokenizer ({len(tokenizer)} tokens, sep id "
            f"{tokenizer.sep_token_id}) does not match the model's special token ids {ids}; "
            "are the tokenizer files missing?"
        )
