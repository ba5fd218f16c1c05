"""Captioning benchmark: seconds per image of BLIP greedy and beam search (`jaxvad.vlm.blip`).

    python -m jaxvad.bench.caption [--config=base] [--batch=1,4] [--tokens=20] [--beams=1,3]

Real weights cannot be downloaded here, so the model has random weights at a real size:
`--config=base` is transformers' default `BlipConfig()` (ViT-B/16 at 384², BERT-base text
decoder: the sizes of Salesforce/blip-image-captioning-base), `large` swaps in ViT-L/16.
For each batch size and beam count, `Captioner.generate` on random pixels: the first call
(compilation + one run), then `--repeats` timed calls; compile ≈ first call − a timed call. Every
call runs the vision tower and `--tokens` decoder steps unless all sequences stop early (the
table says whether any did: random weights rarely emit sep). "length": generated tokens in the
output (HF's crop: the longest returned sequence of the batch).
"""

from __future__ import annotations

import os
import platform
import time

import jax
import numpy as np
import transformers
from absl import app, flags

from jaxvad.vlm import blip

CONFIGS = {
    "base": {},
    "large": {
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
        }
    },
}


def time_generate(
    captioner: blip.Captioner, pixels: np.ndarray, beams: int, tokens: int, repeats: int
) -> tuple[float, float, np.ndarray]:
    """Seconds of the first `generate` call (compilation + run), mean seconds of `repeats`
    further calls, and the token ids."""
    start = time.perf_counter()
    ids = captioner.generate(pixels, beams=beams, max_new_tokens=tokens)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        ids = captioner.generate(pixels, beams=beams, max_new_tokens=tokens)
    return first, (time.perf_counter() - start) / repeats, ids


def benchmark(config: str, batches: list[int], beams: list[int], tokens: int, repeats: int) -> None:
    device = jax.devices()[0]
    hf_config = transformers.BlipConfig(**CONFIGS[config])
    v, t = hf_config.vision_config, hf_config.text_config
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {jax.device_count()} × "
        f"{device.device_kind}; BLIP-{config} (random weights): ViT {v.num_hidden_layers}×"
        f"{v.hidden_size} at {v.image_size}²/{v.patch_size}, text {t.num_hidden_layers}×"
        f"{t.hidden_size}, vocabulary {t.vocab_size}; {tokens} new tokens"
    )
    start = time.perf_counter()
    captioner = blip.Captioner.random(hf_config, seed=0)
    print(f"random init: {time.perf_counter() - start:.1f} s")
    size = captioner.config.vision.image_size
    rng = np.random.default_rng(0)
    print(
        f"{'batch':>5} {'search':>8} {'compile s':>10} {'s/call':>8} {'s/image':>8} "
        f"{'length':>6}  early stops"
    )
    for batch in batches:
        pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
        for beam in beams:
            first, call, ids = time_generate(captioner, pixels, beam, tokens, repeats)
            # Row b stopped early if sep came before its last allowed token.
            stopped = int((ids[:, 1:tokens] == captioner.config.text.sep_token_id).any(1).sum())
            early = f"{stopped}/{batch} rows" if stopped else "none"
            search = "greedy" if beam == 1 else f"beam {beam}"
            print(
                f"{batch:>5} {search:>8} {first - call:>10.1f} {call:>8.2f} {call / batch:>8.2f} "
                f"{ids.shape[1] - 1:>6}  {early}"
            )


def main() -> None:
    config = flags.DEFINE_enum("config", "base", list(CONFIGS), "BLIP size (random weights)")
    batch = flags.DEFINE_list("batch", ["1", "4"], "batch sizes (images per call)")
    beams = flags.DEFINE_list("beams", ["1", "3"], "beam counts (1: greedy search)")
    tokens = flags.DEFINE_integer("tokens", 20, "max_new_tokens of each call")
    repeats = flags.DEFINE_integer("repeats", 2, "timed calls after the first one")

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        benchmark(
            config.value,
            [int(b) for b in batch.value],
            [int(b) for b in beams.value],
            tokens.value,
            repeats.value,
        )

    app.run(run)


if __name__ == "__main__":
    main()
