"""CLIP image and text embeddings (Hugging Face `CLIPModel`) in Flax NNX, within 1e-4 of
transformers' `get_image_features` / `get_text_features`.

* `model`: the vision and text towers with their projections, `ClipModel`.
* `weights`: loading a local HF folder (config.json + safetensors), `ClipWeightsError`.
* `encoder`: `Clip`, images and texts → L2-normalised embeddings through the folder's
  `CLIPProcessor`.
"""

from jaxvad.vlm.clip.encoder import Clip, normalize
from jaxvad.vlm.clip.model import (
    ClipModel,
    ModelConfig,
    TextConfig,
    TextTower,
    VisionConfig,
    VisionTower,
)
from jaxvad.vlm.clip.weights import ClipWeightsError, load_model, load_state, read_config

__all__ = [
    "Clip",
    "ClipModel",
    "ClipWeightsError",
    "ModelConfig",
    "TextConfig",
    "TextTower",
    "VisionConfig",
    "VisionTower",
    "load_model",
    "load_state",
    "normalize",
    "read_config",
]
