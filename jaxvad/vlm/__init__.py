"""The vision–language models, as Flax NNX ports of Hugging Face's PyTorch models, loaded from
local safetensors folders with parity tests against transformers.

* `blip`: BLIP image captioning (`BlipForConditionalGeneration`), for the explanations' captions.
* `clip`: CLIP image and text embeddings (`CLIPModel`).
* `layers`: the blocks the ports share (attention, the pre-LN encoder layer, HF activations).
* `hf_weights`: reading a folder's safetensors into a model, with named errors.
"""
