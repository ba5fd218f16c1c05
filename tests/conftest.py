"""Shared test helpers and trained tiny fixtures (session-scoped: trained once, used by many
tests). Test modules take them as fixtures or import the plain helpers from here (`from
conftest import load_config`), never from each other.

- Commands and configs: `ROOT`, `load_config`, `run_module`.
- Tiny datasets in the official layouts of Ped2, Avenue and ShanghaiTech (`vad_writers`). Every
  frame is uniform grey at `frame_value(k)` (k 0-based), so the frame order survives a lossy
  codec; colour sources add a red block on the left half. Masks mark a block whose width grows
  with the frame number, so mask order is checkable too.
- Trained runs: `tiny_run` (the tiny synthetic config, 6 steps), `labeled_run` (the tiny
  synthetic clips prepared as Ped2 at 32×32 with labels of both classes, 6 steps),
  `object_run` (object mode on clips prepared with objects), `held_out_run` (object samples
  with a training video held out), `object_samples_run` (a model of
  object samples on `object_run`'s data) and `explain_run` (Ped2-like synthetic clips at
  64×64, 600 steps: Grad-CAM has something to find), each trained once per session.
- BLIP: tiny random `BlipForConditionalGeneration` folders with their tokenizer (`blip_saved`).
- CLIP: tiny random `CLIPModel` folders with their tokenizer and image processor (`clip_saved`,
  `CLIP_SIZES`).
- A headless browser for the HTML report (`open_page`, `require_chromium`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest
import scipy.io

if TYPE_CHECKING:  # torch and transformers load only for the tests that use BLIP or CLIP.
    import torch
    import transformers

ROOT = Path(__file__).resolve().parents[1]
H, W = 24, 32

# XLA's compilation dominates these tests: on the 2-core CPU a tiny model's initialisation and
# train step take about 15 s each to compile and milliseconds to run, and many tests compile the
# same programs (the same tiny model's init, error step, ...). One persistent compilation cache
# per test session, which the subprocesses the tests start share through the environment,
# compiles each of them once; a hit loads the same executable, so the numbers are the same.
# (A cache folder set by the caller is used and kept.)
OWN_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_XLA_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxvad-tests-xla-cache-")


def pytest_sessionfinish(session, exitstatus) -> None:
    if OWN_XLA_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The test files that take longest (`pytest --durations=0`, 2-core CPU), longest first.
# pytest-xdist's `--dist loadfile` hands whole files to its workers in collection order, each
# worker holding one file in reserve. Started in alphabetical order, long files left one worker
# working alone at the end; started first, they let both end together. The other files keep
# their order behind them.
LONGEST_FILES = (
    "test_explain.py",
    "test_train.py",
    "test_watch.py",
    "test_detectors.py",
    "test_aadc.py",
    "test_distributed.py",
    "test_gradcam.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: files stay whole.


def load_config(name: str, variant: str | None = "tiny", **fields):
    """`configs/<name>.py` (its `variant`) with `fields` ("a.b": value) changed."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    for field, value in fields.items():
        *parents, last = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[last] = value
    return config


def run_module(
    module: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root (`env`: added to this environment)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else os.environ | env,
    )


def frame_value(k: int) -> int:
    """Grey level of frame k (0-based): distinct, 20 levels apart; up to 11 frames."""
    assert 0 <= k <= 10, "fixture clips hold at most 11 frames"
    return 20 + 20 * k


def frames_of(n: int, colour: bool) -> np.ndarray:
    """`[n, H, W, 3]` BGR (colour) or `[n, H, W]` gray uint8 frames."""
    gray = np.stack([np.full((H, W), frame_value(k), np.uint8) for k in range(n)])
    if not colour:
        return gray
    bgr = np.repeat(gray[..., None], 3, axis=-1)
    bgr[:, :, : W // 2] = (0, 0, 200)
    return bgr


def mask_of(k: int, anomalous: bool) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    if anomalous:
        mask[4:12, 2 : 3 + k] = 1
    return mask


def write_video(path: Path, n: int, fourcc: str, colour: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Gray videos are written as gray (isColor=False): they then decode with three exactly equal
    # channels, like the repackaged Ped2; OpenCV's colour path would tint them by a level or two.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (W, H), colour)
    assert writer.isOpened(), path
    for frame in frames_of(n, colour):
        writer.write(frame)
    writer.release()


def write_images(folder: Path, images: np.ndarray, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images, strict=True):
        assert cv2.imwrite(str(folder / name), image), folder / name


def write_ped2(root: Path, ranges, lengths=(11,), train=(4,), repackaged=False) -> Path:
    """Ped2, official (`.tif` folders, `.bmp` masks `001.bmp`) or repackaged (`mp4v` videos,
    `.png` masks `frame1.png`…, so lexical ≠ numeric order); `ranges`: per test clip, 1-based
    inclusive anomalous ranges, written to `Test/UCSDped2.m`."""
    for i, n in enumerate(train, 1):
        if repackaged:
            write_video(root / "Train" / f"Train{i:03d}.mp4", n, "mp4v", colour=False)
        else:
            names = [f"{k:03d}.tif" for k in range(1, n + 1)]
            write_images(root / "Train" / f"Train{i:03d}", frames_of(n, False), names)
    lines = ["TestVideoFile = {};"]
    for i, (n, clip_ranges) in enumerate(zip(lengths, ranges, strict=True), 1):
        name = f"Test{i:03d}"
        flags = [any(a <= k <= b for a, b in clip_ranges) for k in range(1, n + 1)]
        masks = np.stack([mask_of(k, f) * 255 for k, f in enumerate(flags)])
        if repackaged:
            write_video(root / "Test" / f"{name}.mp4", n, "mp4v", colour=False)
            write_images(
                root / "Test" / f"{name}_gt", masks, [f"frame{k}.png" for k in range(1, n + 1)]
            )
        else:
            names = [f"{k:03d}" for k in range(1, n + 1)]
            write_images(root / "Test" / name, frames_of(n, False), [f"{s}.tif" for s in names])
            write_images(root / "Test" / f"{name}_gt", masks, [f"{s}.bmp" for s in names])
        lines.append(
            f"TestVideoFile{{end+1}}.gt_frame = [{', '.join(f'{a}:{b}' for a, b in clip_ranges)}];"
        )
    (root / "Test" / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    return root


def write_avenue(root: Path, lengths=(5, 6), train=(4,)) -> dict:
    """Avenue: MJPG `.avi` videos, `N_label.mat` masks (`volLabel` 1×N cells), and the interval
    file `frame_labels_avenue.npy` `[1, total]`. Returns the expected per-video labels."""
    for i, n in enumerate(train, 1):
        write_video(root / "training_videos" / f"{i:02d}.avi", n, "MJPG", colour=True)
    (root / "testing_label_mask").mkdir(parents=True)
    mask_labels, interval_labels = [], []
    for v, n in enumerate(lengths, 1):
        write_video(root / "testing_videos" / f"{v:02d}.avi", n, "MJPG", colour=True)
        flags = [(k + v) % 3 == 0 for k in range(n)]
        cells = np.empty((1, n), dtype=object)
        for k, flag in enumerate(flags):
            cells[0, k] = mask_of(k, flag)
        scipy.io.savemat(root / "testing_label_mask" / f"{v}_label.mat", {"volLabel": cells})
        mask_labels.append(np.array(flags, np.int32))
        interval_labels.append((np.arange(n) >= n // 2).astype(np.int32))
    np.save(root / "frame_labels_avenue.npy", np.concatenate(interval_labels)[None].astype(np.int8))
    return {"mask": mask_labels, "interval": interval_labels}


SHT_CLIPS = {"01_0014": 5, "01_0015": 4}


def write_shanghaitech(root: Path, masks_under_testing=False, clips=SHT_CLIPS) -> dict:
    """ShanghaiTech: `training/videos/01_001.avi`, `testing/frames/<clip>/000.jpg`… (0-based),
    `test_frame_mask/<clip>.npy` and `test_pixel_mask/<clip>.npy` (at the top or under
    `testing/`). Returns the expected per-clip labels."""
    write_video(root / "training" / "videos" / "01_001.avi", 4, "MJPG", colour=True)
    mask_root = root / "testing" if masks_under_testing else root
    (mask_root / "test_frame_mask").mkdir(parents=True)
    (mask_root / "test_pixel_mask").mkdir(parents=True)
    labels = {}
    for c, (clip, n) in enumerate(clips.items()):
        names = [f"{k:03d}.jpg" for k in range(n)]
        write_images(root / "testing" / "frames" / clip, frames_of(n, True), names)
        flags = np.array([(k + c) % 2 for k in range(n)], np.int32)
        np.save(mask_root / "test_frame_mask" / f"{clip}.npy", flags.astype(np.int8))
        masks = np.stack([mask_of(k, bool(f)) for k, f in enumerate(flags)])
        np.save(mask_root / "test_pixel_mask" / f"{clip}.npy", masks)
        labels[clip] = flags
    return labels


@pytest.fixture
def vad_writers() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        ped2=write_ped2,
        avenue=write_avenue,
        shanghaitech=write_shanghaitech,
        frame_value=frame_value,
        mask_of=mask_of,
        size=(H, W),
    )


# ---------------------------------------------------------------------------------------------
# Trained runs (session-scoped).


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Where the tiny synthetic dataset (the tiny variant's data) is prepared: by the first
    training run that needs it."""
    return tmp_path_factory.mktemp("synthetic_data")


@pytest.fixture(scope="session")
def tiny_run(synthetic_root, tmp_path_factory) -> types.SimpleNamespace:
    """The tiny variant of the synthetic config trained (6 steps, checkpoints at 3 and 6):
    `config`, `workdir`. Copy the workdir before changing it."""
    from jaxvad import train

    config = load_config("synthetic", **{"data.root": str(synthetic_root)})
    workdir = tmp_path_factory.mktemp("tiny_run") / "run"
    train.train(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir)


@pytest.fixture(scope="session")
def labeled_data(tmp_path_factory) -> dict[str, Path]:
    """The tiny synthetic videos prepared as Ped2: `labeled` (at 32×32 and 64×64) with frames
    10–18 of each test video anomalous (the tiny clips show an anomaly in every frame, and ROC
    needs both classes; masks stay those of the clips), and `unlabeled` (32×32) without the
    `.m` file."""
    from jaxvad.data import builder, synthetic

    base = tmp_path_factory.mktemp("ped2_like")
    source = synthetic.write_ped2_layout(base / "source", synthetic.TINY)
    label_file = source / "Test" / "UCSDped2.m"
    videos = len(list((source / "Test").glob("Test???")))
    label_file.write_text(
        "TestVideoFile = {};\n" + "TestVideoFile{end+1}.gt_frame = [10:18];\n" * videos
    )
    for size in (32, 64):  # 64: the synthetic default config's frame size.
        builder.prepare(
            "ped2", builder.VadConfig.make(size=size), output=base / "labeled", source=source
        )
    label_file.unlink()
    vad = builder.VadConfig.make(size=32)
    builder.prepare("ped2", vad, output=base / "unlabeled", source=source)
    return {"labeled": base / "labeled", "unlabeled": base / "unlabeled"}


def labeled_config(root: Path):
    """The tiny config on the Ped2-like data of `labeled_data` under `root`."""
    return load_config("synthetic", **{"data.dataset": "ped2", "data.root": str(root)})


@pytest.fixture(scope="session")
def labeled_run(labeled_data, tmp_path_factory) -> types.SimpleNamespace:
    """A tiny run (6 steps, checkpoints at 3 and 6) on `labeled_data["labeled"]`: `config`,
    `workdir`. Copy the workdir before changing it."""
    from jaxvad import train

    config = labeled_config(labeled_data["labeled"])
    workdir = tmp_path_factory.mktemp("labeled_run") / "run"
    train.train(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir)


@pytest.fixture(scope="session")
def object_run(tmp_path_factory) -> types.SimpleNamespace:
    """The tiny config in object mode (score.components ("speed",), k = 1) on synthetic clips
    at full size (240×360, the object detector's), short and few (2 train, 2 test clips of
    24–32 frames), prepared as Ped2 with --objects=auto at 32×32 and trained 6 steps: `config`,
    `workdir`, `source` (the Ped2-layout clips), `root`. Copy the workdir before changing it."""
    from jaxvad import config as config_lib
    from jaxvad import train
    from jaxvad.data import builder, synthetic

    root = tmp_path_factory.mktemp("objects")
    spec = dataclasses.replace(
        synthetic.FULL, train_clips=2, test_clips=2, min_frames=24, max_frames=32
    )
    source = synthetic.write_ped2_layout(root / "source", spec)
    label_file = source / "Test" / "UCSDped2.m"  # Both classes (the clips: anomalies throughout).
    lines = "TestVideoFile{end+1}.gt_frame = [10:18];\n" * spec.test_clips
    label_file.write_text("TestVideoFile = {};\n" + lines)
    config = load_config(
        "synthetic",
        **{
            "data.dataset": "ped2",
            "data.root": str(root / "data"),
            "data.objects": "auto",
            "score.components": ("speed",),
        },
    )
    vad = config_lib.dataset_settings(config)
    builder.prepare("ped2", vad, output=root / "data", source=source)
    train.train(config, root / "run")
    return types.SimpleNamespace(config=config, workdir=root / "run", source=source, root=root)


def object_samples_config(run: types.SimpleNamespace, **fields):
    """The tiny config on `object_run`'s prepared data (`run`) with the model on object
    samples, score components ("error", "speed"), and `fields` ("a.b": value) changed."""
    data = {f"data.{key}": run.config.data[key] for key in ("dataset", "root", "objects")}
    samples = {"objects.samples": True, "score.components": ("error", "speed")}
    return load_config("synthetic", **data, **(samples | fields))


SAMPLE_SIZE = 16  # `object_samples_run`'s crops: smaller than the stored 32×32 frames.


@pytest.fixture(scope="session")
def object_samples_run(object_run, tmp_path_factory) -> types.SimpleNamespace:
    """A model of object samples (`object_samples_config`, crops of `SAMPLE_SIZE`) trained 6
    steps on `object_run`'s prepared data: `config`, `workdir`. Copy the workdir before
    changing it."""
    from jaxvad import train

    config = object_samples_config(object_run, **{"objects.size": SAMPLE_SIZE})
    workdir = tmp_path_factory.mktemp("object_samples_run") / "run"
    train.train(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir)


HELD_OUT = 0.5  # `held_out_run`'s objects.holdout: one of `object_run`'s two training videos.


@pytest.fixture(scope="session")
def held_out_run(object_run, tmp_path_factory) -> types.SimpleNamespace:
    """A model of object samples (crops of `SAMPLE_SIZE`) trained 6 steps with one of the two
    training videos held out (`HELD_OUT`) and components ("auto",), chosen on 30 pseudo
    objects of each kind at the first load: `config`, `workdir`. Copy the workdir before
    changing it."""
    from jaxvad import train

    fields = {
        "objects.size": SAMPLE_SIZE,
        "objects.holdout": HELD_OUT,
        "objects.pseudo_objects": 30,
        "score.components": ("auto",),
    }
    config = object_samples_config(object_run, **fields)
    workdir = tmp_path_factory.mktemp("held_out_run") / "run"
    train.train(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir)


def wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    """Polls `condition()` until true; fails when `process` ended or `timeout` s passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_resumes_exactly_after_sigkill(args: list[str], tmp_path: Path, steps: int) -> Path:
    """Trains `jaxvad.train` with `args` (`steps` steps, a checkpoint at steps/2, a log line
    every step) twice: in `tmp_path/whole` without a break, and in `tmp_path/killed` killed
    with SIGKILL once its checkpoint of step steps/2 is written, then rerun. Asserts that the
    rerun resumed from steps/2, that every step's loss (re-run steps included) equals the
    unbroken run's bit for bit, and that the final parameters are identical. Returns the
    final checkpoint's folder of the unbroken run."""
    import jax
    import orbax.checkpoint as ocp

    from jaxvad.checkpoint import Checkpoints
    from jaxvad.metric_writer import read_jsonl

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_module("jaxvad.train", *args, f"--workdir={whole}")
    assert result.returncode == 0, result.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxvad.train", *args, f"--workdir={killed}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Orbax renames the step's temporary folder to its final name when the save commits.
        wait_for((killed / "checkpoints" / str(steps // 2)).is_dir, process, 240)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert Checkpoints(killed).latest_step() == steps // 2, "the kill came after the last step"
    assert max(r["step"] for r in read_jsonl(killed / "metrics.jsonl")) < steps

    result = run_module("jaxvad.train", *args, f"--workdir={killed}")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    expected = {r["step"]: r["loss"] for r in read_jsonl(whole / "metrics.jsonl")}
    seen: dict[int, list[float]] = {}
    for record in read_jsonl(killed / "metrics.jsonl"):
        seen.setdefault(record["step"], []).append(record["loss"])
    assert sorted(seen) == list(range(1, steps + 1))
    for step, losses in seen.items():
        assert losses == [expected[step]] * len(losses), step  # Bit-identical, also re-run steps.

    def final_params(workdir: Path):
        # As numpy arrays: the runs' device count (one per core) need not be this process's.
        path = workdir / "checkpoints" / str(steps) / "state"
        checkpointer = ocp.PyTreeCheckpointer()
        stored = checkpointer.metadata(path).item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
        return restored["params"]

    jax.tree.map(np.testing.assert_array_equal, final_params(whole), final_params(killed))
    return whole / "checkpoints" / str(steps)


def assert_frames_score_their_objects_maximum(found, table, objects, total, scored, workdir):
    """A frame's score is the maximum of its objects' summed components `total` `[M]` (the
    floor without objects, or where one has no score), and `workdir/eval/frame_scores.csv`
    holds it normalised with the training frames' scores (the default protocol)."""
    import csv

    frame = np.full(table.num_frames, found.objects.floor)
    for position in range(table.num_frames):
        mine = total[objects.frame_position == position]
        if len(mine) and np.isfinite(mine).all():
            frame[position] = mine.max()
    np.testing.assert_allclose(scored.frame, frame)
    train_frames = found.objects.train_frame_scores()[found.normal.scored]
    expected = (frame - train_frames.mean()) / train_frames.std()  # "train", no smoothing.
    with (workdir / "eval" / "frame_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == table.num_frames
    counted = np.array([r["scored"] == "1" for r in rows])
    written = np.array([float(r["score"]) for r in rows if r["scored"] == "1"])
    # rel 1e-5: evaluate's error step also returns maps (another XLA program).
    np.testing.assert_allclose(written, expected[counted], rtol=1e-5, atol=1e-9)


EXPLAIN_SIZE = 64
EXPLAIN_STEPS = 600


@pytest.fixture(scope="session")
def explain_run(tmp_path_factory) -> types.SimpleNamespace:
    """The tiny model trained `EXPLAIN_STEPS` steps on 6 normal synthetic clips of 120 frames
    (64×96, prepared as Ped2 at 64×64): `spec` (the synthetic spec, whose test clips the
    explanation tests read), `config`, `workdir`, `root` (a folder for the tests' files)."""
    from jaxvad import train
    from jaxvad.data import builder, synthetic

    root = tmp_path_factory.mktemp("explain")
    spec = synthetic.SyntheticSpec(6, 10, 120, 120, 64, 96, seed=0)
    source = synthetic.write_ped2_layout(root / "source", spec)
    vad = builder.VadConfig.make(size=EXPLAIN_SIZE)
    builder.prepare("ped2", vad, output=root / "data", source=source)
    config = load_config(
        "synthetic",
        **{
            "data.dataset": "ped2",
            "data.root": str(root / "data"),
            "data.size": EXPLAIN_SIZE,
            "train.num_steps": EXPLAIN_STEPS,
            "train.checkpoint_every": EXPLAIN_STEPS,
        },
    )
    train.train(config, root / "run")
    return types.SimpleNamespace(spec=spec, config=config, workdir=root / "run", root=root)


def copy_run(run: types.SimpleNamespace, destination: Path) -> Path:
    """A copy of a trained run's workdir (to change without touching the shared one)."""
    shutil.copytree(run.workdir, destination)
    return destination


# ---------------------------------------------------------------------------------------------
# BLIP: tiny random models saved as Hugging Face folders (the parity tests' references).

WORDS = (  # the tokenizer's vocabulary after its special tokens
    "a an the cat dog man woman car bus tree road street park grass sky red blue green white "
    "black big small sits stands runs walks on in of with near at and ##s ##ing"
)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEP, PAD = 3, 0
SEP_BOOST = 1.5  # added to the sep logit's bias: early stops in a few of 12 steps

SIZES = {  # BlipVisionConfig / BlipTextConfig fields, and save_pretrained's max_shard_size
    "small": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "shard": None,
    },
    "large": {
        "vision": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 48,
            "patch_size": 16,
        },
        "text": {
            "hidden_size": 40,
            "intermediate_size": 72,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
        },
        "shard": "150KB",
    },
}


@dataclasses.dataclass
class BlipTorch:
    """A saved folder with its PyTorch model and processor."""

    folder: Path
    model: transformers.BlipForConditionalGeneration
    processor: transformers.BlipProcessor

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def generate(self, pixels: torch.Tensor, **kwargs) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.generate(pixel_values=pixels, **kwargs).numpy()


def make_tokenizer() -> transformers.BertTokenizer:
    """BLIP's tokenizer layout: BERT specials, `[DEC]` as bos, `[ENC]` as an extra special."""
    import transformers

    vocab = {word: i for i, word in enumerate([*SPECIALS, *WORDS.split()])}
    return transformers.BertTokenizer(
        vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"]
    )


def save_folder(folder: Path, size: str, seed: int) -> BlipTorch:
    """A random BLIP of `SIZES[size]` saved with `save_pretrained` (and its processor) in
    `folder`."""
    import torch
    import transformers

    spec = SIZES[size]
    tokenizer = make_tokenizer()
    config = transformers.BlipConfig(
        vision_config=dict(spec["vision"], initializer_range=0.2),
        text_config=dict(
            spec["text"],
            vocab_size=len(tokenizer),
            max_position_embeddings=40,
            initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
    )
    assert (tokenizer.sep_token_id, tokenizer.pad_token_id) == (SEP, PAD)
    torch.manual_seed(seed)
    model = transformers.BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[SEP] += SEP_BOOST
    kwargs = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(folder, **kwargs)
    image_size = spec["vision"]["image_size"]
    image_processor = transformers.BlipImageProcessor(
        size={"height": image_size, "width": image_size}
    )
    processor = transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return BlipTorch(folder, model, transformers.BlipProcessor.from_pretrained(folder))


@pytest.fixture(scope="session")
def blip_saved(tmp_path_factory) -> dict[str, BlipTorch]:
    """Each of `SIZES` saved (seeds 0, 1, ...) with its PyTorch model and processor."""
    root = tmp_path_factory.mktemp("blip")
    return {size: save_folder(root / size, size, seed) for seed, size in enumerate(SIZES)}


# ---------------------------------------------------------------------------------------------
# CLIP: tiny random models saved as Hugging Face folders (the parity tests' references and
# the feature extractor's model).

CLIP_LETTERS = "abcdefghijklmnopqrstuvwxyz"
CLIP_MERGES = [
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("r", "u"),
    ("ru", "n</w>"),
]

CLIP_SIZES = {  # CLIPVisionConfig / CLIPTextConfig fields, CLIPConfig's, and max_shard_size
    "small": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 4,
            "hidden_act": "quick_gelu",
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "hidden_act": "quick_gelu",
        },
        "projection_dim": 24,
        "legacy_eos": False,
        "shard": None,
    },
    "large": {
        "vision": {
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 24,
            "patch_size": 8,
            "hidden_act": "gelu",
        },
        "text": {
            "hidden_size": 40,
            "intermediate_size": 72,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "max_position_embeddings": 20,
            "hidden_act": "gelu",
        },
        "projection_dim": 32,
        "legacy_eos": True,
        "shard": "60KB",
    },
}


@dataclasses.dataclass
class ClipTorch:
    """A saved folder with its PyTorch model and processor."""

    folder: Path
    model: transformers.CLIPModel
    processor: transformers.CLIPProcessor

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def image_embeds(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.get_image_features(pixel_values=pixels).pooler_output.numpy()

    def text_embeds(self, input_ids: torch.Tensor, attention_mask=None) -> np.ndarray:
        import torch

        with torch.no_grad():
            output = self.model.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask
            )
        return output.pooler_output.numpy()


def make_clip_tokenizer() -> transformers.CLIPTokenizer:
    """CLIP's BPE layout in small: characters, characters ending a word, merges, then
    `<|startoftext|>` and `<|endoftext|>` (the largest id, also the padding)."""
    import transformers

    tokens = [*CLIP_LETTERS, *(c + "</w>" for c in CLIP_LETTERS), ".", ".</w>"]
    tokens += [a + b for a, b in CLIP_MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=CLIP_MERGES
    )


def save_clip_folder(folder: Path, size: str, seed: int) -> ClipTorch:
    """A random CLIP of `CLIP_SIZES[size]` saved with `save_pretrained` (and its processor)."""
    import torch
    import transformers

    spec = CLIP_SIZES[size]
    tokenizer = make_clip_tokenizer()
    eos = 2 if spec["legacy_eos"] else tokenizer.eos_token_id
    config = transformers.CLIPConfig(
        vision_config=spec["vision"],
        text_config=dict(
            spec["text"],
            vocab_size=len(tokenizer) + 4,  # ids after eos, as tokens added to CLIP's
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        ),
        projection_dim=spec["projection_dim"],
        # Larger than CLIP's 1.0, so that random embeddings are not all near zero.
        initializer_factor=5.0,
        logit_scale_init_value=2.0,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    kwargs = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    image_size = spec["vision"]["image_size"]
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return ClipTorch(folder, model, transformers.CLIPProcessor.from_pretrained(folder))


@pytest.fixture(scope="session")
def clip_saved(tmp_path_factory) -> dict[str, ClipTorch]:
    """Each of `CLIP_SIZES` saved (seeds 0, 1) with its PyTorch model and processor."""
    root = tmp_path_factory.mktemp("clip")
    return {size: save_clip_folder(root / size, size, seed) for seed, size in enumerate(CLIP_SIZES)}


# ---------------------------------------------------------------------------------------------
# A browser: opens a local HTML file in headless Chromium (Debian's `chromium`, driven by
# Playwright) and reports what a person would see.

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandboxed root user on a machine without network (see the CI machine's notes).
FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (.ci/run does)")


def open_page(path: Path) -> dict[str, Any]:
    """Loads `path` (file://) and returns `images` [(src, naturalWidth)], `console`
    [(type, text)], `errors` [page errors], `dialogs` [messages], `text` (body text) and
    `scripts` (number of <script> elements)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, list] = {"console": [], "errors": [], "dialogs": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(FLAGS))
        try:
            page = browser.new_page()
            page.on("console", lambda m: seen["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.goto(path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
            )
            text = page.evaluate("document.body.innerText")
            scripts = page.evaluate("document.getElementsByTagName('script').length")
        finally:
            browser.close()
    return {**seen, "images": images, "text": text, "scripts": scripts}


# ---------------------------------------------------------------------------------------------
# Weak supervision: the aadc model on the weakly labelled synthetic set.


@pytest.fixture(scope="session")
def weak_run(tmp_path_factory) -> types.SimpleNamespace:
    """The tiny variant of configs/synthetic_weak.py trained 6 steps (checkpoints at 3 and 6,
    each scored on the 4 training videos held out, `train.holdout`; its tiny random CLIP and
    features written under `root`; a randomly initialised score head, so that 6 steps leave
    snippet scores that differ by more than float noise): `config`, `workdir`, `root`. Copy
    the workdir before changing it."""
    from jaxvad import train

    root = tmp_path_factory.mktemp("weak_data")
    overrides = {"data.root": str(root), "train.holdout": 0.2, "model.head_zeroinit": False}
    config = load_config("synthetic_weak", **overrides)
    workdir = tmp_path_factory.mktemp("weak_run") / "run"
    train.train(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir, root=root)


@pytest.fixture(scope="session")
def weak_full_run(tmp_path_factory) -> types.SimpleNamespace:
    """configs/synthetic_weak.py as it stands (no variant: its full synthetic set, features
    from the tiny random CLIP, 300 steps) trained and evaluated, and its untrained model (the
    trainer's initial parameters, seed `config.seed`) scored on the same test split:
    `trained`, `untrained` (the metrics of `weak_scoring.split_metrics`)."""
    import jax
    from flax import nnx

    from jaxvad import config as config_lib
    from jaxvad import evaluate, model, train, weak_scoring

    root = tmp_path_factory.mktemp("weak_full_data")
    config = load_config("synthetic_weak", variant=None, **{"data.root": str(root)})
    workdir = tmp_path_factory.mktemp("weak_full_run") / "run"
    train.train(config, workdir)
    trained = evaluate.evaluate(config, workdir)
    split = config_lib.weak_data(config).split("test")
    key = jax.random.fold_in(jax.random.key(config.seed), 0)  # train.build's parameter key
    graphdef, params = nnx.split(model.make_model(config, rngs=nnx.Rngs(params=key)))
    predictions = weak_scoring.predict(
        graphdef, params, split, snippets=config.data.snippets, batch_size=config.eval.batch_size
    )
    untrained = weak_scoring.split_metrics(
        predictions, split, snippet_frames=config.data.snippet_frames
    )
    return types.SimpleNamespace(config=config, trained=trained, untrained=untrained)
