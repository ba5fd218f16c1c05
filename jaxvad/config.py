"""The config schema: every field a run can set, with its default, in one place.

Config files (`configs/*.py`) start from `base_config()`, set what differs, and end with
`finalize(config, arg)`; the returned config is locked, so a misspelt field is an error in the
file and on the command line (`--config.model.widht=8`), never a silently ignored setting.
`python -m jaxvad.train --config=configs/ped2.py:tiny` selects the tiny variant that tests use:
the same structure (channels, history, losses) on the tiny synthetic dataset and a small model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from jaxvad import component_choice, object_scores
from jaxvad.data import builder, weak, weak_input

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
SCORE_VARIANTS = ("error", "psnr")
NORMALISATIONS = ("train", "minmax", "none")
# "object" (object mode): the top object's box cut from the original-resolution frame.
CAPTION_SOURCES = ("frame", "crop", "overlay", "object")
# The "where" maps a record can follow (jaxvad.explain.maps names each).
WHERE = ("anomaly_map", "anomaly_foreground", "gradcam", "hirescam")


# Each model's settings (`config.model`, its constructor's keyword arguments; see
# jaxvad/model) and the past frames T it reads. `set_model` (or `--config=FILE:<name>`) switches.
MODEL_DEFAULTS = {
    # DESIGN.md's next-frame and next-flow predictor, full size (224×224, patch 16).
    "predictor": {
        "patch": 16,
        "width": 256,
        "spatial_depth": 4,
        "temporal_depth": 2,
        "heads": 8,
        "mlp_ratio": 4.0,
        "motion_channels": (32, 64, 128, 256),
        "decoder_channels": (256, 128, 64, 32),
        "dropout": 0.0,
        "conv3d": "taps",  # 3D convs as one 2D conv of the taps ("taps", fast on CPU) or "native".
        "dtype": "float32",  # Compute dtype; parameters are always float32.
    },
    # The motion-enhanced masked autoencoder (its paper's Table 1 at widths 32-64-128).
    "motion_mae": {
        "widths": (32, 64, 128),
        "mask_ratio": 0.25,  # Fraction of mask_patch² cells hidden in training.
        "mask_patch": 8,
        "dropout": 0.2,  # After each pooling (the paper's rate).
        "dtype": "float32",
    },
    # MDSF: teacher and student conv autoencoders, discrepancy fusion over len(widths) scales.
    "mdsf": {
        "widths": (32, 64, 128),
        "teacher_convs": 2,  # 3×3 convs per encoder stage.
        "student_convs": 1,
        "reduction": 4,  # Amplification MLP: w → w/reduction → w.
        "mask_ratio": 0.25,  # Teacher's training mask (the MAE part); 0: none.
        "mask_patch": 8,
        "paste_fraction": 0.25,  # Side of the pseudo-anomaly square, in frame widths.
        "margin": 1.0,  # Of the fusion ranking loss, in log units.
        "dtype": "float32",
    },
    # AADC-Net over CLIP snippet features (weak supervision; jaxvad/model/aadc.py). Its width
    # is the CLIP's projection width; K is config.loss.k (it also pools MIL-Align's scores).
    "aadc": {
        # A local HF CLIPModel folder (text tower and tokenizer, frozen); empty: the tiny
        # random CLIP written under config.data.root (the synthetic_weak set only).
        "clip": "",
        "context": 8,  # m learnable context tokens around each class name.
        "gamma": 1.0,  # γ: class logits = γ·alignment score (the paper's best, Table IX).
        "mlp_ratio": 4,  # FFN hidden width / D.
        # The snippet score head starts at zero (big_vision's `head_zeroinit`): before training
        # every snippet scores σ(0) = 0.5, so the untrained model ranks frames at chance.
        "head_zeroinit": True,
        "dtype": "float32",
    },
}
MODEL_HISTORY = {"predictor": 4, "motion_mae": 1, "mdsf": 1, "aadc": 1}  # 1: unused.
# Models of weakly labelled videos (snippet features, video labels) and their datasets
# (jaxvad/data/weak_input.py); every other model trains on prepared frame datasets.
WEAK_MODELS = ("aadc",)
WEAK_DATASETS = ("synthetic_weak", "ucf_crime", "xd_violence", "shanghaitech")

# The small models of the CPU configs (`synthetic`, `ped2_cpu*`) and of the tiny variant.
# CPU predictor: 64×64 or 96×96 frames in 8×8 patches, ~0.65 M parameters, about 0.5 s (64×64)
# to 1.1–1.3 s (96×96) a batch-16 train step on 2 cores.
CPU_MODEL = {
    "patch": 8,
    "width": 96,
    "spatial_depth": 2,
    "temporal_depth": 1,
    "heads": 4,
    "motion_channels": (16, 32, 64),
    "decoder_channels": (64, 32, 16),
}
TINY_MODELS = {
    "predictor": {
        "patch": 8,
        "width": 32,
        "spatial_depth": 1,
        "temporal_depth": 1,
        "heads": 2,
        "motion_channels": (8, 16, 32),
        "decoder_channels": (32, 16, 8),
    },
    "motion_mae": {"widths": (8, 16, 32)},
    "mdsf": {"widths": (8, 16, 32)},
    "aadc": {"mlp_ratio": 2},
}
# Training loss weights (config.loss), per model: its LOSS_TERMS.
LOSS_WEIGHTS = (
    "rgb", "flow", "perceptual", "ssim", "gradient",  # predictor
    "rec", "motion",  # motion_mae
    "teacher", "student", "distill", "fusion",  # mdsf
    "bce", "nce",  # aadc
)  # fmt: skip


# The model's input side must be a multiple of this (`config.model` → int): the predictor's
# patch, the autoencoders' poolings and masking cells (the models' own checks, for a field
# they do not see: `objects.size`).
SIDE_DIVISORS: dict[str, Callable[[ml_collections.ConfigDict], int]] = {
    "predictor": lambda m: m.patch,
    "motion_mae": lambda m: math.lcm(2 ** len(m.widths), m.mask_patch),
    "mdsf": lambda m: math.lcm(2 ** len(m.widths), m.mask_patch),
    "aadc": lambda m: 1,
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
    # The official archive; only quoted in the "not prepared" error. Real weakly labelled
    # datasets: the folder of the test labels (jaxvad/data/weak_input.py; empty: data.features).
    config.data.source = ""
    config.data.size = 224
    config.data.flow = "farneback"
    config.data.label_version = "mask"  # Avenue only.
    config.data.synthetic = "full"  # Synthetic only: preset.
    config.data.synthetic_seed = 0  # Synthetic only.
    # Per-frame object boxes stored with the dataset (jaxvad/data/objects.py): "none", "auto"
    # (the weight-free motion detector) or "mot:DIR" (MOTChallenge files DIR/<video>.txt).
    # Weakly labelled datasets: the snippet features' object fusion (jaxvad/data/clip_features.py,
    # features of width 2E).
    config.data.objects = "none"
    config.data.channels = 1  # Model input channels: stored frames are converted (gray ↔ RGB).
    config.data.read_threads = 4
    # Weakly labelled datasets (WEAK_DATASETS; jaxvad/data/weak_input.py): snippet features in
    # VadCLIP's layout (<video>__<k>.npy and train.csv / test.csv); empty: the synthetic set's,
    # computed under data.root when missing.
    config.data.features = ""
    config.data.snippets = 256  # Training length S: longer videos averaged down, shorter padded.
    config.data.snippet_frames = 16  # Frames per feature snippet (spreads scores over frames).
    # Frames per second of the source videos, for the times in explanations (0: read from a
    # video file where there is one, else times are given in frames only).
    config.data.fps = 0.0

    set_model(config, "predictor")

    config.loss = ml_collections.ConfigDict()  # Weights of each model's loss terms.
    # predictor: λ1..λ5 of DESIGN.md's objective.
    config.loss.rgb = 1.0
    config.loss.flow = 1.0
    config.loss.perceptual = 1.0  # Used only when loss.vgg16 names a weights file.
    config.loss.ssim = 0.2
    config.loss.gradient = 1.0
    config.loss.vgg16 = ""  # VGG16 safetensors (torchvision names); empty: perceptual loss off.
    config.loss.perceptual_layers = ("relu1_2", "relu2_2", "relu3_3")
    # motion_mae: α·L_rec + β·L_motion (jaxvad/model/motion_mae.py).
    config.loss.rec = 1.0
    config.loss.motion = 1.0
    # mdsf (jaxvad/model/mdsf.py): teacher and student reconstruction, distillation, fusion.
    config.loss.teacher = 1.0
    config.loss.student = 1.0
    config.loss.distill = 1.0
    config.loss.fusion = 1.0
    # aadc (jaxvad/weak_losses.py): L = bce·L_bce + nce·L_nce (nce: the paper's λ), both
    # pooling each video's K highest snippet values (the paper's K = 5, Table IX).
    config.loss.bce = 1.0
    config.loss.nce = 1.0
    config.loss.k = 5

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
    # Weakly supervised models: the fraction of the training videos (of each label) held out of
    # training. Each checkpoint scores them (video AUC: top-K mean snippet score vs. video
    # label, `jaxvad.weak_scoring.video_auc`), and evaluate, explain and watch load the best
    # checkpoint (kept beside the latest ones). 0: none held out, the last checkpoint is used.
    config.train.holdout = 0.0

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
    # What a frame's score is made of: ("error",), the model's frame error above; or object
    # components (jaxvad/object_scores.py: "velocity", "speed", "size", "position", "deep"
    # (object samples), or groups joined by "+"; "faster"), each calibrated and summed per
    # object, a frame the max over its objects; or ("auto",): object components chosen on the
    # training objects without test labels, jaxvad/component_choice.py).
    config.score.components = ("error",)
    # How each object component is calibrated before they are summed (jaxvad/object_scores.py):
    # "zscore", (d − mean) / std of the training objects' values; "range" (AI-VAD's),
    # (d − min) / (99.9th percentile − min).
    config.score.calibration = "zscore"

    # Object mode (config.score.components other than "error", or object samples; needs
    # config.data.objects).
    config.objects = ml_collections.ConfigDict()
    config.objects.k = 1  # Neighbours of the kNN density of each component.
    # The training objects nearest an object's place (box centre) that the "faster" component
    # and the explanation's "% of training objects near this place move slower" compare with.
    config.objects.nearby = 100
    # Object samples: the model trains and scores on each object's box cut from its T past
    # frames, the target and their flows (jaxvad.data.pipeline, "Object samples"), not on whole
    # frames; the "error" component is then each object's model error.
    config.objects.samples = False
    config.objects.size = 32  # Side the crops are resized to: the model's image size then.
    # Each side of a box pushed out by this fraction of the box's width (x) or height (y)
    # before cutting (0.25: a box 1.5× as wide and tall), so the crop shows some surroundings.
    config.objects.margin = 0.25
    # The fraction of the training videos held out of the model's training (object samples only):
    # the "error" component is calibrated, and ("auto",) chooses the components, on the model's
    # errors of these videos, which it never saw (jaxvad.object_scores.held_out_videos).
    config.objects.holdout = 0.0
    # Components ("auto",): the training objects turned into each pseudo-anomaly to choose them.
    config.objects.pseudo_objects = 1000
    # ... and the pseudo-anomalies they become (component_choice.KINDS): a prior on what the
    # anomalies will be; the choice maximises the mean of their frame AUCs.
    config.objects.pseudo_kinds = component_choice.KINDS

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 32  # Global, like train.batch_size.
    config.eval.pixel_metrics = True  # Pixel AUC/AP and RBDC/TBDC where the split has masks.
    config.eval.rbdc_thresholds = 50  # Map thresholds of the RBDC/TBDC curves.
    config.eval.map_sigma = 0.04  # Spatial Gaussian blur of pixel maps, in frame widths.

    # Watching live sources (jaxvad/watch): events from a threshold with hysteresis.
    config.watch = ml_collections.ConfigDict()
    config.watch.open_after = 3  # An event opens at the k-th consecutive frame above.
    config.watch.close_after = 5  # ... and closes at the m-th consecutive frame below.
    config.watch.update_every_s = 1.0  # The least wall time between two updates of an event.
    config.watch.queue = 8  # Frames waiting per source; a live one drops its oldest beyond.
    config.watch.status_every_s = 10.0  # Seconds between status lines (fps, dropped, events).
    config.watch.backoff_s = 1.0  # First wait before reopening a lost stream, doubled up to
    config.watch.max_backoff_s = 30.0  # this.
    # Object mode: the frames that prime the object detector's background model before any is
    # scored (the preparation primes a video on up to 500, BoxSettings.history; jaxvad/watch/
    # objects.py). Held per camera while priming, grey at the original resolution.
    config.watch.prime_frames = 500

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
    # The "where" map: the heatmap of each record, its overlay and the captioned crop, one of
    # WHERE: "anomaly_map" (the error map), "anomaly_foreground" (the error map, its motion
    # term kept where the frame differs from the training background), "gradcam" (the
    # paper's), "hirescam"; chosen by the measurements of --quality (README, "How good each
    # map is"). Object mode: the first two give the objects' scores over their boxes, the
    # others Grad-CAM inside the top box.
    config.explain.where = "anomaly_foreground"
    # --quality (jaxvad/explain/measure.py): every map's quality over the explained anomalies.
    config.explain.quality_anomalies = 96  # Measured, evenly spaced among them (0: all).
    config.explain.quality_steps = 10  # Deletion and insertion steps.
    config.explain.quality_noise = 0.02  # Max-Sensitivity: uniform noise radius, model space.
    config.explain.quality_draws = 3  # Max-Sensitivity: noise draws per anomaly.
    config.explain.quality_randomised = 8  # Anomalies of the parameter randomisation test.
    # Weakly supervised models (jaxvad/explain/weak_alarms.py): an alarm is a run of snippets
    # whose anomaly score σ(logit) is at least this (0.5: the MIL classifier's own boundary).
    config.explain.alarm_score = 0.5

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = 1  # Devices per parameter shard; the data axis takes the rest.
    # Where JAX runs on CPU, one process: the devices its cores are split into (each takes
    # its part of every batch; `distributed.use_cpu_cores`). 0: one per core, as many as
    # divide train.batch_size, eval.batch_size and explain.batch_size; 1: one device, XLA's
    # threads across the cores. README, Watch: the train step 1.1–1.25× as fast on 2 cores.
    config.mesh.cpu_devices = 0
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


def set_model(config: ml_collections.ConfigDict, name: str) -> None:
    """Makes `config.model` model `name` with its defaults (`MODEL_DEFAULTS`) and sets
    `config.history` to the past frames it reads. Call before `finalize`."""
    if name not in MODEL_DEFAULTS:
        raise ConfigError(f"config.model.name: one of {list(MODEL_DEFAULTS)}, got {name!r}")
    config.model = ml_collections.ConfigDict({"name": name, **MODEL_DEFAULTS[name]})
    config.history = MODEL_HISTORY[name]


def make_tiny(config: ml_collections.ConfigDict) -> None:
    """Shrinks `config` in place to the tiny variant: tiny synthetic data, a small model, a
    few steps. Channels, history, loss weights and the optimizer are kept."""
    weak = config.model.name in WEAK_MODELS
    config.data.dataset = "synthetic_weak" if weak else "synthetic"
    config.data.synthetic = "tiny"
    config.data.size = 32
    config.data.read_threads = 2
    config.model.update(TINY_MODELS[config.model.name])
    config.loss.vgg16 = ""
    config.optimizer.warmup_steps = 2
    config.train.update(batch_size=4, num_steps=6, log_every=1, checkpoint_every=3)
    config.eval.batch_size = 8
    config.explain.batch_size = 4


# The object configs' k: of 1, 3, 10 and 30 (each with "zscore" and "range" calibration), the
# one whose ("auto",) choice separated the pseudo-anomalies best on Ped2's held-out training
# videos (mean pseudo AUC 0.7151 against 0.7098 for k = 1; README, "Objects"). No test label.
OBJECT_K = 10


def set_object_mode(
    config: ml_collections.ConfigDict,
    components: tuple[str, ...] = (component_choice.AUTO,),
    k: int = OBJECT_K,
    samples: bool = True,
) -> None:
    """Object mode in place: objects from the motion detector stored with the dataset, frames
    scored from their objects' `components` (`jaxvad.object_scores`) with k neighbours, the
    model trained on object samples (crops) when `samples`. The default, ("auto",), chooses
    the components on the training objects without test labels (`jaxvad.component_choice`)."""
    config.data.objects = "auto"
    config.score.components = components
    config.objects.k = k
    config.objects.samples = samples
    config.objects.holdout = 0.25 if samples else 0.0


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variants named by `arg` and locks the config. `arg` is None or a
    comma-separated list of a model name (`set_model`) and "tiny" (`make_tiny`), e.g.
    `--config=configs/synthetic.py:mdsf,tiny`."""
    variants = arg.split(",") if arg else []
    unknown = [v for v in variants if v != "tiny" and v not in MODEL_DEFAULTS]
    if unknown:
        raise ValueError(
            f"unknown config variant {unknown[0]!r}: use 'tiny' and/or a model name "
            f"({', '.join(MODEL_DEFAULTS)}), comma-separated"
        )
    for name in variants:
        if name in MODEL_DEFAULTS:
            set_model(config, name)
    if "tiny" in variants:
        make_tiny(config)
    config.lock()
    return config


def check_components(
    components: tuple[str, ...],
    objects: str,
    samples: bool,
    check: Callable[[bool, str, str], None],
) -> None:
    """config.score.components: ("error",), or object components with objects prepared; with
    object samples (`samples`) "error" is each object's model error and joins them, and the
    "deep" group (the model's pooled latent of each object) may be used."""
    field = "score.components"
    check(len(components) >= 1, field, "at least one component")
    if components == ("error",):
        return
    check(
        component_choice.AUTO not in components or components == (component_choice.AUTO,),
        field,
        f"{component_choice.AUTO!r} (components chosen without test labels) stands alone",
    )
    check(
        samples or "error" not in components,
        field,
        "the model's frame error and object components do not mix: set "
        "config.objects.samples=True to train on objects and score each object's model error",
    )
    for component in components:
        if component in ("error", component_choice.AUTO):
            continue
        try:
            object_scores.component_groups(component)
        except ValueError as e:
            check(False, field, str(e))
        check(
            samples or not object_scores.uses_deep(component),
            field,
            f"{component!r}: the deep group is the model's pooled latent of each object's "
            "sample: set config.objects.samples=True to train the model on objects",
        )
    check(
        objects != "none",
        field,
        "object components need objects stored with the dataset: set config.data.objects "
        "to auto or mot:DIR (and prepare it with --objects)",
    )
    check(len(set(components)) == len(components), field, "each component once")


def batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The global batches a run's devices must divide (`mesh.cpu_devices` = 0 picks a CPU
    device count that does): training, evaluation and explanation."""
    return (config.train.batch_size, config.eval.batch_size, config.explain.batch_size)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field when a value is out of its domain."""

    def check(ok: bool, field: str, problem: str) -> None:
        if not ok:
            raise ConfigError(f"config.{field}: {problem}")

    m, t = config.model, config.train
    datasets = [*builder.BUILDERS, *WEAK_DATASETS]
    check(config.data.dataset in datasets, "data.dataset", f"one of {datasets}")
    weak = m.name in WEAK_MODELS
    check(  # ShanghaiTech is both: frames for the other models, its weak split for these.
        config.data.dataset in (WEAK_DATASETS if weak else builder.BUILDERS),
        "data.dataset",
        f"the weakly supervised models {list(WEAK_MODELS)} train on the weakly labelled "
        f"datasets {list(WEAK_DATASETS)}, the others on {list(builder.BUILDERS)} "
        f"(model {m.name!r}, dataset {config.data.dataset!r})",
    )
    if weak:
        check(config.loss.k >= 1, "loss.k", "at least 1")
        check(config.data.snippets >= 1, "data.snippets", "at least 1")
        check(config.data.snippet_frames >= 1, "data.snippet_frames", "at least 1")
        check(not config.objects.samples, "objects.samples", f"not for {m.name!r}")
        check(
            bool(m.clip) or config.data.dataset == "synthetic_weak",
            "model.clip",
            "a local Hugging Face CLIP folder (empty only for synthetic_weak's tiny random one)",
        )
        check(
            bool(config.data.features) or config.data.dataset == "synthetic_weak",
            "data.features",
            "the folder of the dataset's snippet features and train.csv / test.csv "
            "(jaxvad/data/weak_input.py; empty only for synthetic_weak)",
        )
    check(
        0 <= t.holdout < 1 and (weak or t.holdout == 0),
        "train.holdout",
        "a fraction of the training videos in [0, 1), for the weakly supervised models only "
        "(frame models hold out with objects.holdout)",
    )
    check(config.data.channels in (1, 3), "data.channels", "1 (gray) or 3 (RGB)")
    check(config.history >= 1, "history", "at least 1")
    check(m.name in MODEL_DEFAULTS, "model.name", f"one of {list(MODEL_DEFAULTS)}")
    fields, expected = set(m) - {"name"}, set(MODEL_DEFAULTS[m.name])
    check(
        fields == expected,
        "model.name",
        f"{m.name!r} takes the fields {sorted(expected)}, but this config's model has "
        f"{sorted(fields)}: switch models with --config=FILE:{m.name} (or "
        f"jaxvad.config.set_model), not --config.model.name",
    )
    check(m.dtype in DTYPES, "model.dtype", f"one of {DTYPES}")
    check(config.optimizer.name in OPTIMIZERS, "optimizer.name", f"one of {OPTIMIZERS}")
    check(config.optimizer.schedule in SCHEDULES, "optimizer.schedule", f"one of {SCHEDULES}")
    check(t.batch_size >= 1, "train.batch_size", "at least 1")
    check(t.num_steps > 0 or t.num_epochs > 0, "train.num_steps", "or train.num_epochs must be > 0")
    check(t.log_every >= 1 and t.checkpoint_every >= 1, "train", "log/checkpoint every ≥ 1 step")
    check(config.mesh.fsdp >= 1, "mesh.fsdp", "at least 1")
    check(config.mesh.cpu_devices >= 0, "mesh.cpu_devices", "≥ 0 (0: one per core)")
    s = config.score
    check(s.variant in SCORE_VARIANTS, "score.variant", f"one of {SCORE_VARIANTS}")
    check(s.normalisation in NORMALISATIONS, "score.normalisation", f"one of {NORMALISATIONS}")
    check(
        s.calibration in object_scores.CALIBRATIONS,
        "score.calibration",
        f"one of {object_scores.CALIBRATIONS}",
    )
    check(math.isfinite(s.alpha) and s.alpha >= 0, "score.alpha", "a number ≥ 0")
    check(s.smoothing_sigma >= 0, "score.smoothing_sigma", "≥ 0 (0: no smoothing)")
    check(0 < s.threshold_quantile <= 1, "score.threshold_quantile", "in (0, 1]")
    o = config.objects
    check_components(tuple(s.components), config.data.objects, o.samples, check)
    check(o.k >= 1, "objects.k", "at least 1")
    check(o.nearby >= 2, "objects.nearby", "at least 2 (a spread of speeds)")
    check(o.pseudo_objects >= 1, "objects.pseudo_objects", "at least 1")
    w = config.watch
    check(w.open_after >= 1, "watch.open_after", "at least 1")
    check(w.close_after >= 1, "watch.close_after", "at least 1")
    check(w.queue >= 1, "watch.queue", "at least 1")
    check(w.prime_frames >= 1, "watch.prime_frames", "at least 1")
    check(w.update_every_s >= 0 and w.status_every_s > 0, "watch.status_every_s", "> 0")
    check(0 < w.backoff_s <= w.max_backoff_s, "watch.backoff_s", "in (0, watch.max_backoff_s]")
    kinds = tuple(o.pseudo_kinds)
    check(
        len(kinds) >= 1
        and len(set(kinds)) == len(kinds)
        and set(kinds) <= set(component_choice.KINDS),
        "objects.pseudo_kinds",
        f"one or more of {component_choice.KINDS}, each once",
    )
    check(
        not o.samples or config.data.objects != "none",
        "objects.samples",
        "object samples need objects stored with the dataset: set config.data.objects to auto "
        "or mot:DIR (and prepare it with --objects)",
    )
    check(math.isfinite(o.margin) and o.margin >= 0, "objects.margin", "a number ≥ 0")
    check(0 <= o.holdout < 1, "objects.holdout", "a fraction of the training videos in [0, 1)")
    if o.samples:
        divisor = SIDE_DIVISORS[m.name](m)
        check(
            o.size >= divisor and o.size % divisor == 0,
            "objects.size",
            f"the {m.name!r} model takes sides divisible by {divisor} (its patches or poolings), "
            f"got {o.size}",
        )
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
    check(e.where in WHERE, "explain.where", f"one of {WHERE}")
    check(e.quality_anomalies >= 0, "explain.quality_anomalies", "≥ 0 (0: all)")
    check(e.quality_steps >= 1 and e.quality_draws >= 1, "explain.quality_steps", "≥ 1")
    check(e.quality_noise > 0, "explain.quality_noise", "> 0")
    check(e.quality_randomised >= 1, "explain.quality_randomised", "at least 1")
    check(0 < e.alarm_score < 1, "explain.alarm_score", "in (0, 1)")
    check(config.data.fps >= 0, "data.fps", "≥ 0 (0: from the video file)")
    for name in LOSS_WEIGHTS:
        check(config.loss[name] >= 0, f"loss.{name}", "weights are ≥ 0")
    check(
        math.isfinite(config.optimizer.learning_rate) and config.optimizer.learning_rate > 0,
        "optimizer.learning_rate",
        "a positive number",
    )


# ---------------------------------------------------------------------------------------------
# A config as data: what a checkpoint stores, overrides, and the settings the stages take.


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """Every leaf field as "a.b.c" → value (the form of `--config.a.b.c=value`)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict | Mapping):
            flat |= {f"{key}.{k}": v for k, v in flatten(value).items()}
        else:
            flat[key] = value
    return flat


def _tuples(value: Any) -> Any:
    """JSON lists back to the schema's tuples, at every depth (e.g. `mesh.rules`)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def override(config: ml_collections.ConfigDict, fields: Mapping[str, Any]) -> None:
    """Sets each "a.b.c" → value of `fields` in `config` (ConfigError for a field the schema
    does not have)."""
    for name, value in fields.items():
        *parents, last = name.split(".")
        node = config
        try:
            for parent in parents:
                node = node[parent]
            node[last] = _tuples(value) if isinstance(node[last], tuple) else value
        except (AttributeError, KeyError) as e:
            raise ConfigError(f"config.{name}: no such field in jaxvad's config schema") from e


def from_dict(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config a run was saved with (`config.to_dict()`, or its JSON), on today's schema:
    fields added since the run keep their defaults. Locked, like a config file's."""
    config = base_config()
    set_model(config, stored["model"]["name"])
    override(config, flatten(stored))
    config.lock()
    return config


def dataset_settings(config: ml_collections.ConfigDict) -> builder.VadConfig:
    """The preparation settings of the dataset `config.data` names."""
    data = config.data
    return builder.VadConfig.make(
        data.dataset,
        size=data.size,
        flow=data.flow,
        label_version=data.label_version,
        synthetic=data.synthetic,
        seed=data.synthetic_seed,
        objects=data.objects,
    )


def dataset_dir(config: ml_collections.ConfigDict, *, needed_for: str = "") -> Path:
    """The prepared dataset of `config.data` (`builder.DatasetNotPreparedError`, with the
    command that prepares it, when it is not under `config.data.root`)."""
    data = config.data
    return builder.dataset_dir(
        data.root,
        data.dataset,
        dataset_settings(config),
        source=data.source,
        needed_for=needed_for,
    )


def is_weak(config: ml_collections.ConfigDict) -> bool:
    """Whether `config`'s model learns from weakly labelled videos (`WEAK_MODELS`)."""
    return config.model.name in WEAK_MODELS


def weak_data(config: ml_collections.ConfigDict) -> weak_input.WeakData:
    """The features, CLIP and batching of a weakly labelled `config.data`."""
    data = config.data
    spec = None
    if data.dataset == "synthetic_weak":
        spec = dataclasses.replace(weak.SYNTHETIC_PRESETS[data.synthetic], seed=data.synthetic_seed)
    clip = config.model.clip
    return weak_input.WeakData(
        dataset=data.dataset,
        features=weak_input.features_folder(
            data.features,
            data.root,
            data.synthetic,
            data.synthetic_seed,
            clip,
            data.snippet_frames,
            data.objects,
        ),
        clip=weak_input.clip_folder(clip, data.root),
        random_clip=not clip,
        spec=spec,
        snippets=data.snippets,
        snippet_frames=data.snippet_frames,
        objects=data.objects,
        labels=Path(data.source) if data.source else None,
    )
