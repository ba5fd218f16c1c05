"""`Clip`: L2-normalised CLIP embeddings of RGB images and of texts, the API the rest of jaxvad
calls.

    clip = Clip.load("models/clip-vit-base-patch32")      # a local HF CLIPModel folder
    images = clip.encode_images(frames)                    # [N, H, W, 3] uint8 RGB → [N, E]
    texts = clip.encode_texts(["a person running", ...])   # → [M, E]
    similarity = images @ texts.T                          # cosine similarities

Preprocessing is transformers' own, from the folder: the CLIP image processor (resize of the
shortest edge, centre crop, rescale, mean/std) and the CLIP BPE tokenizer, so pixel values and
token ids are those of the PyTorch pipeline. Texts are padded to `max_position_embeddings` tokens
(longer ones are truncated, keeping the end-of-text token), so the text tower compiles once per
batch size; padding changes nothing (causal and padding masks). The towers are jitted on
(graphdef, state).
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

from jaxvad.model.layers import Dtype
from jaxvad.vlm.clip.model import LEGACY_EOS_TOKEN_ID, ClipModel, ModelConfig
from jaxvad.vlm.clip.weights import ClipWeightsError, load_model
from jaxvad.vlm.hf_weights import load_processor


def _image_embeds(graphdef: nnx.GraphDef, state: nnx.State, pixels: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).image_embeds(pixels)


def _text_embeds(
    graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array
) -> jax.Array:
    return nnx.merge(graphdef, state).text_embeds(input_ids, attention_mask)


def normalize(embeds: jax.Array | np.ndarray) -> np.ndarray:
    """`[N, E]` → float32 numpy rows of unit L2 norm."""
    embeds = np.asarray(embeds, np.float32)
    return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)


class Clip:
    """A `ClipModel` (split into graphdef and state), its jitted towers and, when loaded from a
    folder, its `transformers.CLIPProcessor`."""

    def __init__(self, model: ClipModel, processor: Any | None = None):
        self.config: ModelConfig = model.config
        self.graphdef, self.state = nnx.split(model)
        self.processor = processor
        self._image_embeds = jax.jit(functools.partial(_image_embeds, self.graphdef))
        self._text_embeds = jax.jit(functools.partial(_text_embeds, self.graphdef))

    @classmethod
    def load(cls, folder: str | Path, *, dtype: Dtype = jnp.float32) -> Clip:
        """Model, weights and processor of a local HF `CLIPModel` folder (config.json,
        safetensors weights, tokenizer and preprocessor files); no network. Raises
        `ClipWeightsError` for a folder that cannot be loaded."""
        model = load_model(folder, dtype=dtype)
        processor = load_processor(folder, transformers.CLIPProcessor, ClipWeightsError)
        _check_processor(folder, processor, model.config)
        return cls(model, processor)

    @property
    def logit_scale(self) -> float:
        """exp(`logit_scale`): the factor HF's `logits_per_image` puts on cosine similarities."""
        return float(np.exp(np.asarray(self.state["logit_scale"][...])))

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (`[N, H, W, 3]` or a sequence of `[H, W, 3]` of any sizes) → pixel
        values `[N, S, S, 3]` float32 (channels last), by the folder's CLIP image processor."""
        processor = self._need_processor()
        pixels = processor.image_processor(
            list(images), return_tensors="np", input_data_format="channels_last"
        )["pixel_values"]
        return np.asarray(pixels, np.float32).transpose(0, 2, 3, 1)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """N texts → (input_ids, attention_mask) `[N, max_position_embeddings]` int32, by the
        folder's tokenizer (bos, the tokens, eos, then padding)."""
        tokens = self._need_processor().tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.config.text.max_position_embeddings,
            return_tensors="np",
        )
        return (
            np.asarray(tokens["input_ids"], np.int32),
            np.asarray(tokens["attention_mask"], np.int32),
        )

    def image_embeds(self, pixel_values: np.ndarray | jax.Array) -> np.ndarray:
        """pixel_values `[N, S, S, 3]` float32, channels last (`preprocess`) → `[N, E]` float32,
        unnormalised (HF's `get_image_features`)."""
        S, C = self.config.vision.image_size, self.config.vision.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (S, S, C):
            channels_first = pixel_values.ndim == 4 and pixel_values.shape[1] == C
            hint = f" (channels first? transpose to [N, {S}, {S}, {C}])" if channels_first else ""
            raise ValueError(
                f"pixel_values must be [N, {S}, {S}, {C}], got {list(pixel_values.shape)}{hint}"
            )
        return np.asarray(self._image_embeds(self.state, jnp.asarray(pixel_values, jnp.float32)))

    def text_embeds(
        self, input_ids: np.ndarray | jax.Array, attention_mask: np.ndarray | jax.Array
    ) -> np.ndarray:
        """input_ids, attention_mask `[N, L]` (`tokenize`) → `[N, E]` float32, unnormalised
        (HF's `get_text_features`)."""
        return np.asarray(
            self._text_embeds(
                self.state,
                jnp.asarray(input_ids, jnp.int32),
                jnp.asarray(attention_mask, jnp.int32),
            )
        )

    def encode_images(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (`[N, H, W, 3]` or a sequence of `[H, W, 3]`) → `[N, E]` float32,
        each row of unit L2 norm."""
        return normalize(self.image_embeds(self.preprocess(images)))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → `[N, E]` float32, each row of unit L2 norm."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of texts, got one string")
        return normalize(self.text_embeds(*self.tokenize(texts)))

    def _need_processor(self) -> Any:
        if self.processor is None:
            raise ValueError(
                "this Clip has no tokenizer/image processor; load one from a folder with "
                "Clip.load to encode images or texts"
            )
        return self.processor


def _check_processor(folder: str | Path, processor: Any, config: ModelConfig) -> None:
    """Raises ClipWeightsError if the processor cannot serve the model: another crop size, or a
    tokenizer with ids the model lacks or another end-of-text id."""
    crop = processor.image_processor.crop_size if processor.image_processor.do_center_crop else {}
    expected = config.vision.image_size
    if (crop.get("height"), crop.get("width")) != (expected, expected):
        raise ClipWeightsError(
            f"{folder}: the image processor crops to {dict(crop) or 'nothing'}, the model "
            f"expects {expected}×{expected}"
        )
    tokenizer, text = processor.tokenizer, config.text
    legacy = text.eos_token_id == LEGACY_EOS_TOKEN_ID  # pools the largest id, not the eos
    if len(tokenizer) > text.vocab_size or (
        not legacy and tokenizer.eos_token_id != text.eos_token_id
    ):
        raise ClipWeightsError(
            f"{folder}: the tokenizer ({len(tokenizer)} tokens, eos id {tokenizer.eos_token_id}) "
            f"does not match the model ({text.vocab_size} tokens, eos id {text.eos_token_id}); "
            "are the tokenizer files missing?"
        )
