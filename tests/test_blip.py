"""BLIP captioning port (`jaxvad.vlm.blip`) against transformers' PyTorch BLIP.

Two tiny randomly initialised `BlipForConditionalGeneration` models of different shapes are saved
with `save_pretrained` (one as sharded safetensors) next to a tiny WordPiece tokenizer and a BLIP
image processor (`blip_saved` in conftest.py). Parity: vision features and teacher-forced logits
(f32, 1e-4), token ids of greedy and beam search against `generate`, captions against the
processor's decode of torch's tokens. Errors: broken copies of the saved folders.

Random weights give flat logits, hence near-ties: the initialisers are scaled up (std 0.2) and the
sep logit is raised a little so that some sequences stop before `max_new_tokens`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import SEP, SIZES, BlipTorch
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxvad.vlm import blip


@pytest.fixture(scope="module")
def captioners(blip_saved) -> dict[str, blip.Captioner]:
    return {size: blip.Captioner.load(blip_saved[size].folder) for size in blip_saved}


def random_images(
    seed: int, count: int = 3, size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """RGB uint8 images, of different sizes unless `size` is given (the processor resizes)."""
    rng = np.random.default_rng(seed)
    shapes = [size] * count if size else [(40, 56), (64, 48), (33, 33), (50, 70)]
    return [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(count)]


def channels_last(pixels: torch.Tensor) -> np.ndarray:
    return pixels.numpy().transpose(0, 2, 3, 1)


@nnx.jit
def forward(model: blip.CaptionModel, pixels: jax.Array, tokens: jax.Array):
    """(image embeddings, teacher-forced logits), one compilation per model shape."""
    return model.vision(pixels), model.logits(pixels, tokens)


def test_the_large_model_is_sharded(blip_saved):
    index = blip_saved["large"].folder / "model.safetensors.index.json"
    shards = set(json.loads(index.read_text())["weight_map"].values())
    assert len(shards) >= 2
    assert not (blip_saved["large"].folder / "model.safetensors").exists()


def prompt(ref: BlipTorch) -> torch.Tensor:
    """Teacher-forcing tokens `[3, 7]`: bos, then words (and sep)."""
    tokens = torch.tensor([[ref.model.config.text_config.bos_token_id, 9, 12, 20, 30, 7, SEP]] * 3)
    tokens[1, 2:4] = torch.tensor([15, 16])
    return tokens


@pytest.mark.parametrize("size", SIZES)
def test_vision_features_and_logits_match_torch(blip_saved, size):
    ref = blip_saved[size]
    pixels, tokens = ref.pixels(random_images(0)), prompt(ref)
    with torch.no_grad():
        features = ref.model.vision_model(pixel_values=pixels).last_hidden_state.numpy()
        logits = ref.model(pixel_values=pixels, input_ids=tokens).logits.numpy()
    model = blip.load_model(ref.folder)
    ours_features, ours_logits = forward(model, channels_last(pixels), tokens.numpy())
    np.testing.assert_allclose(np.asarray(ours_features), features, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours_logits), logits, rtol=0, atol=1e-4)
    assert np.ptp(features[:, 0], axis=0).max() > 0.1, "images should not all look alike"


def test_bfloat16_compute_stays_close(blip_saved):
    ref = blip_saved["small"]
    pixels, tokens = channels_last(ref.pixels(random_images(0))), prompt(ref).numpy()
    full = np.asarray(forward(blip.load_model(ref.folder), pixels, tokens)[1])
    half = forward(blip.load_model(ref.folder, dtype=jnp.bfloat16), pixels, tokens)[1]
    assert half.dtype == jnp.float32
    assert np.abs(np.asarray(half) - full).max() < 0.1 * np.abs(full).max()


@pytest.mark.parametrize("size", SIZES)
def test_greedy_and_beam_search_match_torch_generate(blip_saved, captioners, size):
    ref = blip_saved[size]
    pixels = ref.pixels(random_images(3))
    stopped_early = 0
    for beams in (1, 3):
        expected = ref.generate(pixels, max_new_tokens=12, num_beams=beams)
        ours = captioners[size].generate(channels_last(pixels), beams=beams, max_new_tokens=12)
        np.testing.assert_array_equal(ours, expected, err_msg=f"beams={beams}")
        stopped_early += int((expected[:, 1:-1] == SEP).any(axis=1).sum())
    assert stopped_early, "no sequence ended before max_new_tokens: the stop path is untested"


@pytest.mark.parametrize(
    "options",
    [
        {"early_stopping": True, "length_penalty": 0.5},
        {"early_stopping": "never", "length_penalty": 2.0},
    ],
)
def test_beam_search_options_match_torch(blip_saved, captioners, options):
    ref = blip_saved["small"]
    pixels = ref.pixels(random_images(2, count=4))
    expected = ref.generate(pixels, max_new_tokens=10, num_beams=3, **options)
    ours = captioners["small"].generate(
        channels_last(pixels), beams=3, max_new_tokens=10, **options
    )
    np.testing.assert_array_equal(ours, expected)


def test_caption_matches_the_torch_pipeline(blip_saved, captioners):
    """Same batch size and token count as the generation test: its compilations are reused."""
    ref, captioner = blip_saved["large"], captioners["large"]
    batch = np.stack(random_images(5, count=3, size=(45, 60)))  # an array [B, H, W, 3]
    listed = random_images(6)  # a list of images of different sizes
    for images, beams in ((batch, 1), (listed, 3)):
        tokens = ref.generate(ref.pixels(list(images)), max_new_tokens=12, num_beams=beams)
        expected = ref.processor.batch_decode(tokens, skip_special_tokens=True)
        assert captioner.caption(images, beams=beams, max_new_tokens=12) == expected
    np.testing.assert_array_equal(captioner.preprocess(listed), channels_last(ref.pixels(listed)))
    assert captioner.caption(listed[:2], beams=3, max_new_tokens=12, pad_to=3) == expected[:2]


def test_generate_rejects_channels_first(blip_saved, captioners):
    pixels = blip_saved["small"].pixels(random_images(0, count=1)).numpy()
    with pytest.raises(ValueError, match=r"channels first"):
        captioners["small"].generate(pixels)


def test_random_captioner_generates_but_cannot_caption(blip_saved):
    config = blip_saved["small"].model.config
    captioner = blip.Captioner.random(config, seed=3)
    ids = captioner.generate(np.zeros((2, 32, 32, 3), np.float32), beams=2, max_new_tokens=5)
    assert ids.shape[0] == 2 and 2 <= ids.shape[1] <= 6
    assert (ids[:, 0] == config.text_config.bos_token_id).all()
    assert (ids >= 0).all() and (ids < config.text_config.vocab_size).all()
    with pytest.raises(ValueError, match="no tokenizer"):
        captioner.caption(random_images(0, count=1))


# Loading: tied heads and broken folders ------------------------------------------------------


HEAD = "text_decoder.cls.predictions."
WORD_EMBEDDINGS = "text_decoder.bert.embeddings.word_embeddings.weight"


def rewrite(folder: Path, change) -> None:
    """Applies `change(tensors)` (a dict of numpy arrays) to `folder/model.safetensors`."""
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture
def copy_of(blip_saved, tmp_path):
    def copy(size: str) -> Path:
        return Path(shutil.copytree(blip_saved[size].folder, tmp_path / size))

    return copy


def teacher_forced(model, ref: BlipTorch) -> tuple[np.ndarray, np.ndarray]:
    """(ours, torch's) logits of `model` and a torch model, for the same inputs."""
    pixels, tokens = ref.pixels(random_images(0)), prompt(ref)
    with torch.no_grad():
        expected = ref.model(pixel_values=pixels, input_ids=tokens).logits.numpy()
    return np.asarray(forward(model, channels_last(pixels), tokens.numpy())[1]), expected


def test_redundant_decoder_tensors_of_old_checkpoints_are_accepted(blip_saved, copy_of, caplog):
    folder = copy_of("small")

    def add_head(tensors):
        tensors[f"{HEAD}decoder.weight"] = tensors[WORD_EMBEDDINGS].copy()
        tensors[f"{HEAD}decoder.bias"] = tensors[f"{HEAD}bias"].copy()
        tensors["text_decoder.bert.embeddings.position_ids"] = np.arange(40)[None]

    rewrite(folder, add_head)
    with caplog.at_level(logging.WARNING):
        model = blip.load_model(folder)
    assert model.text.decoder is None  # still tied
    assert not caplog.records
    ours, expected = teacher_forced(model, blip_saved["small"])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_a_differing_decoder_matrix_unties_the_head_as_in_transformers(blip_saved, copy_of, caplog):
    folder = copy_of("small")
    rng = np.random.default_rng(0)

    def untie(tensors):
        shape = tensors[WORD_EMBEDDINGS].shape
        tensors[f"{HEAD}decoder.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)

    rewrite(folder, untie)
    with caplog.at_level(logging.WARNING):
        model = blip.load_model(folder)
    assert model.text.decoder is not None
    assert "not tied" in caplog.text
    reference = transformers.BlipForConditionalGeneration.from_pretrained(folder).eval()
    ours, expected = teacher_forced(
        model, BlipTorch(folder, reference, blip_saved["small"].processor)
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_unexpected_tensors_are_logged(copy_of, caplog):
    folder = copy_of("small")
    rewrite(
        folder, lambda tensors: tensors.update({"text_model.extra.weight": np.zeros(3, np.float32)})
    )
    with caplog.at_level(logging.WARNING):
        blip.load_model(folder)
    assert "text_model.extra.weight" in caplog.text


def test_missing_folder_and_config(copy_of, tmp_path):
    with pytest.raises(blip.BlipWeightsError, match=r"nowhere: no such folder"):
        blip.load_model(tmp_path / "nowhere")
    folder = copy_of("small")
    (folder / "config.json").unlink()
    with pytest.raises(blip.BlipWeightsError, match=r"config\.json: missing"):
        blip.Captioner.load(folder)


def test_invalid_config(copy_of):
    folder = copy_of("small")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(blip.BlipWeightsError, match=r"config\.json: not a valid BLIP config") as e:
        blip.load_model(folder)
    assert str(e.value).startswith(str(folder / "config.json"))


def test_pickled_weights_only(copy_of):
    folder = copy_of("small")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(blip.BlipWeightsError, match=r"pytorch_model\.bin.*safetensors") as e:
        blip.load_model(folder)
    assert str(e.value).startswith(str(folder))


def test_missing_shard(copy_of):
    folder = copy_of("large")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).unlink()
    with pytest.raises(blip.BlipWeightsError, match=f"shard {shard} named in the index is missing"):
        blip.load_model(folder)


def test_missing_tensor(copy_of):
    folder = copy_of("small")
    name = "text_decoder.bert.encoder.layer.1.crossattention.self.key.weight"
    rewrite(folder, lambda tensors: tensors.pop(name))
    with pytest.raises(blip.BlipWeightsError, match=f"tensor {name} is missing") as e:
        blip.load_model(folder)
    assert str(e.value).startswith(str(folder))


def test_wrong_shape(copy_of):
    folder = copy_of("small")
    name = "vision_model.encoder.layers.0.self_attn.qkv.weight"
    rewrite(folder, lambda tensors: tensors.update({name: np.zeros((96, 31), np.float32)}))
    with pytest.raises(
        blip.BlipWeightsError, match=rf"{name} has shape \[96, 31\], expected \[96, 32\]"
    ):
        blip.load_model(folder)


def test_missing_processor(copy_of):
    folder = copy_of("small")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(
        blip.BlipWeightsError, match=r"does not match the model's special token ids"
    ):
        blip.Captioner.load(folder)
