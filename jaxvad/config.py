"""The config schema: every field a run can set, with its default, in one place.

Config files (`configs/*.py`) start from `base_config()`, set what differs, and end with
`finalize(config, arg)`; the returned config is locked, so a misspelt field is an error in the
file and on the command line (`--config.model.widht=8`), never a silently ignored setting.
`python -m jaxvad.train --config=configs/ped2.py:tiny` selects the tiny variant that tests use:
the same structure (channels, history, losses) on the tiny synthetic dataset and a small model.
"""

from __future__ import annotations

import math

import ml_collections

from jaxvad.data import builder

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
CONV3D = ("taps", "native")
SCORE_VARIANTS = ("error", "psnr")
NORMALISATIONS = ("train", "minmax", "none")
CAPTION_SOURCES = ("frame", "crop", "overlay")


# The small model of the CPU configs (`synthetic`, `ped2_cpu`): 64×64 or 96×96 frames in 8×8
# patches, ~0.65 M parameters, about 0.5 s (64×64) to 1.1–1.3 s (96×96) a batch-16 train step
# on 2 cores.
CPU_MODEL = {
    "patch": 8,
    "width": 96,
    "spatial_depth": 2,
    "temporal_depth": 1,
    "heads": 4,
    "motion_channels": (16, 32, 64),
    "decoder_channels": (64, 32, 16),
}


class ConfigError(ValueError):
    """A config field holds a value outside its domain."""


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the full-size model of DESIGN.md at 224×224)."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Parameters, data order and dropout all derive from it.
    config.history = 4  # T: past frames per prediction.

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "synthetic"  # One of builder.BUILDERS.
    config.data.root = "data"  # Where `jaxvad.data_prep --output` wrote prepared datasets.
    config.data.source = ""  # The official archive; only quoted in the "not prepared" error.
    config.data.size = 224
    config.data.flow = "farneback"
    config.data.label_version = "mask"  # Avenue only.
    config.data.synthetic = "full"  # Synthetic only: preset.
    config.data.synthetic_seed = 0  # Synthetic only.
    config.data.channels = 1  # Model input channels: stored frames are converted (gray ↔ RGB).
    config.data.read_threads = 4

    config.model = ml_collections.ConfigDict()
    config.model.name = "predictor"
    config.model.patch = 16
    config.model.width = 256
    config.model.spatial_depth = 4
    config.model.temporal_depth = 2
    config.model.heads = 8
    config.model.mlp_ratio = 4.0
    config.model.motion_channels = (32, 64, 128, 256)
    config.model.decoder_channels = (256, 128, 64, 32)
    config.model.dropout = 0.0
    config.model.conv3d = "taps"  # 3D convs as summed 2D convs ("taps", fast on CPU) or "native".
    config.model.dtype = "float32"  # Compute dtype; parameters are always float32.

    config.loss = ml_collections.ConfigDict()  # λ1..λ5 of DESIGN.md's objective.
    config.loss.rgb = 1.0
    config.loss.flow = 1.0
    config.loss.perceptual = 1.0  # Used only when loss.vgg16 names a weights file.
    config.loss.ssim = 0.2
    config.loss.gradient = 1.0
    config.loss.vgg16 = ""  # VGG16 safetensors (torchvision names); empty: perceptual loss off.
    config.loss.perceptual_layers = ("relu1_2", "relu2_2", "relu3_3")

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-4
    config.optimizer.schedule = "cosine"  # Linear warm-up, then cosine decay to 1% at the end.
    config.optimizer.warmup_steps = 200
    config.optimizer.weight_decay = 1e-4  # adamw only.
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.grad_clip_norm = 1.0  # 0: no clipping.

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32  # Global: split over processes and the mesh.
    config.train.num_epochs = 20
    config.train.num_steps = 0  # > 0 overrides num_epochs.
    config.train.log_every = 20
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 3

    # Frame scores (see jaxvad/scoring.py): S = n(c_rgb) + α·n(c_flow), c = E (variant "error")
    # or −PSNR (variant "psnr"), n = the normalisation, then Gaussian smoothing over frames.
    config.score = ml_collections.ConfigDict()
    config.score.variant = "error"
    config.score.alpha = 1.0
    # "train": z-scores from the training split's errors (stored with the checkpoint; usable on
    # unlabeled video); "minmax": per test video (needs the whole video); "none": raw.
    config.score.normalisation = "train"
    config.score.smoothing_sigma = 0.0  # Gaussian σ in frames; 0: no smoothing.
    config.score.threshold_quantile = 0.99  # Alarm threshold: this quantile of training scores.

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 32  # Global, like train.batch_size.
    config.eval.pixel_metrics = True  # Pixel AUC/AP and RBDC/TBDC where the split has masks.
    config.eval.rbdc_thresholds = 50  # Map thresholds of the RBDC/TBDC curves.
    config.eval.map_sigma = 0.04  # Spatial Gaussian blur of pixel maps, in frame widths.

    # Explanations (see jaxvad/explain): Grad-CAM, overlays and captions of each anomaly.
    config.explain = ml_collections.ConfigDict()
    config.explain.batch_size = 8  # Anomalies per Grad-CAM and caption batch (global).
    config.explain.overlay_beta = 0.5  # β of I_overlay = β·I + (1 − β)·colormap(H).
    # What BLIP captions: "frame", "crop" (the frame around the Grad-CAM peak) or "overlay"
    # (the paper's choice: the frame with the heatmap blended in).
    config.explain.caption_source = "crop"
    config.explain.crop_fraction = 0.5  # Side of the crop, in frame widths.
    config.explain.caption_beams = 3  # 1: greedy search.
    config.explain.caption_tokens = 30  # Most new tokens per caption.
    # Pointing game (where masks are known): a map's peak within this distance of the mask,
    # in frame widths, counts as "near" (15 px at 224 px, as usual).
    config.explain.pointing_tolerance = 15 / 224

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = 1  # Devices per parameter shard; the data axis takes the rest.
    # Logical axis → mesh axis. The batch goes over every device; parameters are split along
    # "fsdp" on their embedding / output-channel dimension (replicated when fsdp = 1).
    config.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("conv_out", "fsdp"),
        ("mlp", None),
        ("heads", None),
        ("conv_in", None),
    )
    return config


def make_tiny(config: ml_collections.ConfigDict) -> None:
    """Shrinks `config` in place to the tiny variant: tiny synthetic data, a small model, a
    few steps. Channels, history, loss weights and the optimizer are kept."""
    config.data.dataset = "synthetic"
    config.data.synthetic = "tiny"
    config.data.size = 32
    config.data.read_threads = 2
    config.model.update(
        patch=8,
        width=32,
        spatial_depth=1,
        temporal_depth=1,
        heads=2,
        motion_channels=(8, 16, 32),
        decoder_channels=(32, 16, 8),
    )
    config.loss.vgg16 = ""
    config.optimizer.warmup_steps = 2
    config.train.update(batch_size=4, num_steps=6, log_every=1, checkpoint_every=3)
    config.eval.batch_size = 8
    config.explain.batch_size = 4


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variant named by `arg` (None or "tiny") and locks the config."""
    if arg == "tiny":
        make_tiny(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}: use no variant or 'tiny'")
    config.lock()
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field when a value is out of its domain."""

    def check(ok: bool, field: str, problem: str) -> None:
        if not ok:
            raise ConfigError(f"config.{field}: {problem}")

    m, t = config.model, config.train
    check(
        config.data.dataset in builder.BUILDERS, "data.dataset", f"one of {list(builder.BUILDERS)}"
    )
    check(config.data.channels in (1, 3), "data.channels", "1 (gray) or 3 (RGB)")
    check(config.history >= 1, "history", "at least 1")
    check(m.dtype in DTYPES, "model.dtype", f"one of {DTYPES}")
    check(m.conv3d in CONV3D, "model.conv3d", f"one of {CONV3D}")
    check(config.optimizer.name in OPTIMIZERS, "optimizer.name", f"one of {OPTIMIZERS}")
    check(config.optimizer.schedule in SCHEDULES, "optimizer.schedule", f"one of {SCHEDULES}")
    check(t.batch_size >= 1, "train.batch_size", "at least 1")
    check(t.num_steps > 0 or t.num_epochs > 0, "train.num_steps", "or train.num_epochs must be > 0")
    check(t.log_every >= 1 and t.checkpoint_every >= 1, "train", "log/checkpoint every ≥ 1 step")
    check(config.mesh.fsdp >= 1, "mesh.fsdp", "at least 1")
    s = config.score
    check(s.variant in SCORE_VARIANTS, "score.variant", f"one of {SCORE_VARIANTS}")
    check(s.normalisation in NORMALISATIONS, "score.normalisation", f"one of {NORMALISATIONS}")
    check(math.isfinite(s.alpha) and s.alpha >= 0, "score.alpha", "a number ≥ 0")
    check(s.smoothing_sigma >= 0, "score.smoothing_sigma", "≥ 0 (0: no smoothing)")
    check(0 < s.threshold_quantile <= 1, "score.threshold_quantile", "in (0, 1]")
    check(config.eval.batch_size >= 1, "eval.batch_size", "at least 1")
    check(config.eval.rbdc_thresholds >= 2, "eval.rbdc_thresholds", "at least 2")
    check(config.eval.map_sigma >= 0, "eval.map_sigma", "≥ 0 (0: no blur)")
    e = config.explain
    check(e.batch_size >= 1, "explain.batch_size", "at least 1")
    check(0 <= e.overlay_beta <= 1, "explain.overlay_beta", "in [0, 1]")
    sources = CAPTION_SOURCES
    check(e.caption_source in sources, "explain.caption_source", f"one of {sources}")
    check(0 < e.crop_fraction <= 1, "explain.crop_fraction", "in (0, 1]")
    check(e.caption_beams >= 1, "explain.caption_beams", "at least 1 (1: greedy)")
    check(e.caption_tokens >= 1, "explain.caption_tokens", "at least 1")
    check(e.pointing_tolerance >= 0, "explain.pointing_tolerance", "≥ 0")
    for name in ("rgb", "flow", "perceptual", "ssim", "gradient"):
        check(config.loss[name] >= 0, f"loss.{name}", "weights are ≥ 0")
    check(
        math.isfinite(config.optimizer.learning_rate) and config.optimizer.learning_rate > 0,
        "optimizer.learning_rate",
        "a positive number",
    )
