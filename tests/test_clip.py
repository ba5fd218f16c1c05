"""CLIP port (`jaxvad.vlm.clip`) against transformers' PyTorch CLIP.

Two tiny randomly initialised `CLIPModel`s of different shapes are saved with `save_pretrained`
(the large one as sharded safetensors) next to a tiny BPE tokenizer and a CLIP image processor
(`clip_saved`). They differ in widths, layers, heads, projection width, image and patch sizes,
activation (`quick_gelu` / `gelu`) and in the pooled text token: the small one looks its
`eos_token_id` up, the large one has the legacy `eos_token_id == 2` (pool at the largest id).
Parity: image and text embeddings (f32, 1e-4 absolute) and the front's normalised embeddings and
logits. Errors: broken copies of the saved folders.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from conftest import CLIP_SIZES as SIZES
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxvad.vlm import clip

ATOL = 1e-4
TEXTS = ["a cat runs.", "the dog", "a dog runs near the cat.", "xyz"]  # different lengths


@pytest.fixture(scope="module")
def models(clip_saved) -> dict[str, clip.ClipModel]:
    return {size: clip.load_model(clip_saved[size].folder) for size in clip_saved}


def random_images(seed: int, count: int = 3) -> list[np.ndarray]:
    """RGB uint8 images of different sizes (the processor resizes and crops)."""
    rng = np.random.default_rng(seed)
    shapes = [(40, 56), (64, 48), (33, 33), (50, 70)]
    return [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(count)]


@nnx.jit
def image_embeds(model: clip.ClipModel, pixels: jax.Array) -> jax.Array:
    return model.image_embeds(pixels)


@nnx.jit
def text_embeds(model: clip.ClipModel, input_ids: jax.Array, attention_mask) -> jax.Array:
    return model.text_embeds(input_ids, attention_mask)


def assert_close(ours, expected, what: str) -> None:
    ours = np.asarray(ours)
    assert ours.shape == expected.shape and ours.dtype == np.float32, (ours.shape, ours.dtype)
    delta = np.abs(ours - expected).max()
    print(f"{what}: max |Δ| = {delta:.2e} (values up to {np.abs(expected).max():.2f})")
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL, err_msg=what)


def test_the_large_model_is_sharded(clip_saved):
    folder = clip_saved["large"].folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert not (folder / "model.safetensors").exists()


@pytest.mark.parametrize("size", SIZES)
def test_image_embeddings_match_torch(clip_saved, models, size):
    ref = clip_saved[size]
    pixels = ref.pixels(random_images(0))
    expected = ref.image_embeds(pixels)
    ours = image_embeds(models[size], pixels.numpy().transpose(0, 2, 3, 1))
    assert_close(ours, expected, f"{size} image embeddings")
    assert np.ptp(expected, axis=0).max() > 0.1, "images should not all look alike"


@pytest.mark.parametrize("size", SIZES)
def test_text_embeddings_match_torch(clip_saved, models, size):
    ref = clip_saved[size]
    tokens = ref.processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert not tokens["attention_mask"].all(), "some texts should be padded"
    expected = ref.text_embeds(tokens["input_ids"], tokens["attention_mask"])
    ours = text_embeds(models[size], tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
    assert_close(ours, expected, f"{size} text embeddings")
    assert np.ptp(expected, axis=0).max() > 0.1, "texts should not all look alike"


@pytest.mark.parametrize("size", SIZES)
def test_the_pooled_token_follows_transformers(clip_saved, models, size):
    """Ids where the largest id (the vocabulary has ids after eos) is not the first eos, and the
    legacy model's "eos" 2 is elsewhere: each rule pools another token."""
    ref = clip_saved[size]
    eos = ref.processor.tokenizer.eos_token_id
    input_ids = torch.tensor([[eos + 2, 5, eos, 7, eos, 3], [4, 9, 2, 1, eos + 1, eos]])
    expected = ref.text_embeds(input_ids)
    assert_close(text_embeds(models[size], input_ids.numpy(), None), expected, f"{size} pooling")
    legacy = models[size].config.text.eos_token_id == 2
    assert legacy == SIZES[size]["legacy_eos"]
    positions = np.asarray(models[size].text.pooled_positions(input_ids.numpy()))
    np.testing.assert_array_equal(positions, [0, 4] if legacy else [2, 5])


def test_the_front_gives_normalised_embeddings_and_logits_of_the_torch_pipeline(clip_saved):
    ref = clip_saved["large"]  # the sharded one
    encoder = clip.Clip.load(ref.folder)
    images = random_images(1, count=4)
    ours_images, ours_texts = encoder.encode_images(images), encoder.encode_texts(TEXTS)
    inputs = ref.processor(text=TEXTS, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = ref.model(**inputs)
    assert_close(ours_images, out.image_embeds.numpy(), "front image embeddings")
    assert_close(ours_texts, out.text_embeds.numpy(), "front text embeddings")
    np.testing.assert_allclose(np.linalg.norm(ours_images, axis=-1), 1, rtol=1e-6)
    logits = encoder.logit_scale * ours_images @ ours_texts.T
    assert_close(logits, out.logits_per_image.numpy(), "front logits per image")
    np.testing.assert_allclose(
        encoder.preprocess(images), inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)
    )
    model = nnx.merge(encoder.graphdef, encoder.state)
    pixels, tokens = encoder.preprocess(images), encoder.tokenize(TEXTS)
    raw = model.logits(encoder.image_embeds(pixels), encoder.text_embeds(*tokens))
    assert_close(raw, out.logits_per_image.numpy(), "ClipModel.logits")


def test_the_front_rejects_channels_first_and_single_strings(clip_saved):
    encoder = clip.Clip.load(clip_saved["small"].folder)
    pixels = clip_saved["small"].pixels(random_images(0, count=1)).numpy()
    with pytest.raises(ValueError, match=r"channels first"):
        encoder.image_embeds(pixels)
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode_texts("a cat")


# Loading: broken folders ---------------------------------------------------------------------


def rewrite(folder: Path, change) -> None:
    """Applies `change(tensors)` (a dict of numpy arrays) to `folder/model.safetensors`."""
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture
def copy_of(clip_saved, tmp_path):
    def copy(size: str) -> Path:
        return Path(shutil.copytree(clip_saved[size].folder, tmp_path / size))

    return copy


def test_pickled_weights_only(copy_of):
    folder = copy_of("small")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(
        clip.ClipWeightsError, match=r"pytorch_model\.bin.*not read.*safetensors"
    ) as e:
        clip.load_model(folder)
    assert str(e.value).startswith(str(folder))


def test_no_weights_at_all(copy_of):
    folder = copy_of("small")
    (folder / "model.safetensors").unlink()
    with pytest.raises(clip.ClipWeightsError, match=r"no model\.safetensors or model\.safetensors"):
        clip.load_model(folder)


def test_missing_tensor(copy_of):
    folder = copy_of("small")
    name = "text_model.encoder.layers.1.self_attn.k_proj.weight"
    rewrite(folder, lambda tensors: tensors.pop(name))
    with pytest.raises(clip.ClipWeightsError, match=f"tensor {name} is missing") as e:
        clip.load_model(folder)
    assert str(e.value).startswith(str(folder / "model.safetensors"))


def test_missing_tensor_of_a_sharded_folder_names_the_index(copy_of):
    folder = copy_of("large")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "visual_projection.weight"
    shard = folder / index["weight_map"].pop(name)
    index_path.write_text(json.dumps(index))
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(clip.ClipWeightsError, match=f"index.json: tensor {name} is missing"):
        clip.load_model(folder)


def test_wrong_shape(copy_of):
    folder = copy_of("small")
    name = "vision_model.embeddings.patch_embedding.weight"
    rewrite(folder, lambda tensors: tensors.update({name: np.zeros((32, 3, 5, 4), np.float32)}))
    with pytest.raises(
        clip.ClipWeightsError, match=rf"{name} has shape \[32, 3, 5, 4\], expected \[32, 3, 4, 4\]"
    ):
        clip.load_model(folder)


def test_missing_shard(copy_of):
    folder = copy_of("large")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).unlink()
    with pytest.raises(clip.ClipWeightsError, match=f"shard {shard} named in the index is missing"):
        clip.load_model(folder)


def test_missing_folder_and_invalid_config(copy_of, tmp_path):
    with pytest.raises(clip.ClipWeightsError, match=r"nowhere: no such folder"):
        clip.load_model(tmp_path / "nowhere")
    folder = copy_of("small")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(clip.ClipWeightsError, match=r"config\.json: not a valid CLIP config"):
        clip.load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(clip.ClipWeightsError, match=r"config\.json: missing"):
        clip.Clip.load(folder)


def test_unexpected_tensors_are_logged(copy_of, caplog):
    folder = copy_of("small")
    rewrite(
        folder, lambda tensors: tensors.update({"text_model.extra.weight": np.zeros(3, np.float32)})
    )
    with caplog.at_level(logging.WARNING):
        clip.load_model(folder)
    assert "text_model.extra.weight" in caplog.text


def test_missing_tokenizer(copy_of):
    folder = copy_of("small")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(clip.ClipWeightsError, match=r"tokenizer \(2 tokens.*files missing\?"):
        clip.Clip.load(folder)


def test_an_image_processor_of_another_size(copy_of):
    folder = copy_of("small")
    path = folder / "processor_config.json"  # the image processor's settings are inside
    config = json.loads(path.read_text())
    config["image_processor"]["crop_size"] = {"height": 20, "width": 20}
    path.write_text(json.dumps(config))
    with pytest.raises(clip.ClipWeightsError, match=r"crops to .*20.*expects 16×16"):
        clip.Clip.load(folder)
