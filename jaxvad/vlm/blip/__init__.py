"""BLIP image captioning (Hugging Face `BlipForConditionalGeneration`) in Flax NNX, with token-exact
parity to transformers' greedy and beam search.

* `model`: the vision transformer and the BERT text decoder with a key/value cache.
* `weights`: loading a local HF folder (config.json + safetensors), `BlipWeightsError`.
* `generate`: jitted greedy and beam search (what of HF's semantics is matched: its docstring).
* `captioner`: `Captioner`, images → captions through the folder's `BlipProcessor`.
"""

from jaxvad.vlm.blip.captioner import Captioner
from jaxvad.vlm.blip.generate import beam_search, generate, greedy_search
from jaxvad.vlm.blip.model import CaptionModel, ModelConfig, TextConfig, VisionConfig
from jaxvad.vlm.blip.weights import BlipWeightsError, load_model, read_config

__all__ = [
    "BlipWeightsError",
    "CaptionModel",
    "Captioner",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "beam_search",
    "generate",
    "greedy_search",
    "load_model",
    "read_config",
]
