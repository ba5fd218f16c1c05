"""Explanation benchmark: `jaxvad.explain` end to end on one video, Grad-CAM per anomaly, and
BLIP caption time per anomaly (greedy and beam search).

    python -m jaxvad.bench.explain --config=configs/ped2_cpu.py --workdir=runs/ped2_cpu \
        --video=../shared/data/ped2/Test/Test004.mp4

End to end: `explain(video=...)` without captions, twice (each call loads the checkpoint and
compiles its steps, as the command does, so the two runs show the run-to-run spread): frames/s of
the whole call (decoding, flow, scoring, Grad-CAM, PNGs, report), and from its summary.json the
scoring seconds and the Grad-CAM + error maps + predictions time per anomaly. Captions: BLIP
at `--blip` size with random weights (real weights cannot be downloaded here; the cost does not
depend on the values, but random weights rarely stop early, so every caption runs all `--tokens`
decoder steps) on one batch of `config.explain.batch_size` images, greedy and with
`config.explain.caption_beams` beams.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import transformers
from absl import flags

from jaxvad import cli
from jaxvad.bench.caption import CONFIGS, time_generate
from jaxvad.explain import command
from jaxvad.vlm import blip


def benchmark(
    config: ml_collections.ConfigDict, workdir: str, video: str, blip_size: str, tokens: int
) -> None:
    device = jax.devices()[0]
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {jax.device_count()} × "
        f"{device.device_kind}; video {video}; explain.batch_size {config.explain.batch_size}"
    )
    for run in ("run 1", "run 2"):
        start = time.perf_counter()
        out = command.explain(config, workdir, video=video)
        wall = time.perf_counter() - start
        summary = json.loads((Path(out) / "summary.json").read_text())
        seconds, explained = summary["seconds"], summary["explained"]
        per_anomaly = seconds["gradcam_and_maps"] / explained if explained else float("nan")
        print(
            f"{run}: {summary['frames']} frames in {wall:.1f} s = "
            f"{summary['frames'] / wall:.1f} frames/s end to end; scoring {seconds['score']:.1f} s "
            f"({summary['frames'] / seconds['score']:.1f} frames/s); {explained} anomalies, "
            f"Grad-CAM + maps {per_anomaly * 1e3:.0f} ms per anomaly"
        )

    captioner = blip.Captioner.random(transformers.BlipConfig(**CONFIGS[blip_size]), seed=0)
    size, batch = captioner.config.vision.image_size, config.explain.batch_size
    pixels = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    for beams in sorted({1, config.explain.caption_beams}):
        first, call, _ = time_generate(captioner, pixels, beams, tokens, repeats=1)
        search = "greedy" if beams == 1 else f"beam {beams}"
        print(
            f"caption ({search}, BLIP-{blip_size}, {tokens} tokens, batch {batch}): "
            f"{call / batch:.2f} s per anomaly (compile {first - call:.1f} s)"
        )


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "a trained run", required=True)
    video = flags.DEFINE_string("video", None, "a video file or folder of frames", required=True)
    size = flags.DEFINE_enum("blip", "base", list(CONFIGS), "BLIP size (random weights)")
    tokens = flags.DEFINE_integer("tokens", 20, "new tokens per caption")
    cli.run(
        lambda: benchmark(config.value, workdir.value, video.value, size.value, tokens.value),
        config=config,
        usage="python -m jaxvad.bench.explain --config=FILE --workdir=DIR --video=PATH",
    )


if __name__ == "__main__":
    main()
