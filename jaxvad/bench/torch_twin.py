"""PyTorch twin benchmark: the predictor's jitted steps against what a user would pick instead,
a PyTorch twin of the same layers, on the same shapes, measured interleaved in one process.

    python -m jaxvad.bench.torch_twin --config=configs/synthetic.py [--steps=5] [--rounds=5]
        [--cameras=1,8] [--torch_threads=0] [--profile_steps=3] [--[no]torch_compile]
        [--[no]blocks] [--[no]profile] [--only_train] [--sweep] [--config.a.b=v]

JAX: the model of the config built as the trainer builds it (`jaxvad.train.build`: its jitted
`train_step` with the state donated, AdamW of `make_optimizer`, the loss terms and weights of
`config.loss`), `jaxvad.inference.error_step` (the evaluation step: forward and per-frame errors,
at `config.eval.batch_size`) and `jaxvad.inference.stream_step` (the streaming step of
`jaxvad.watch`, per `--cameras` batch), on `random_batch`es of the config's shapes, laid out on
the mesh as the commands lay them out: parameters replicated, each batch split over the devices
(on CPU one per core by default, `config.mesh.cpu_devices`; the streaming batch padded to a
multiple of them, as `jaxvad.watch` pads its camera slots).

PyTorch: `TorchPredictor`, a twin of `jaxvad.model.Predictor` layer for layer (patch-embedding
Linear, pre-LN transformer blocks with exact GELU and `scaled_dot_product_attention`, the
causal temporal transformer, `nn.Conv3d` 3×3×3 stride (1, 2, 2) motion encoder, gated
cross-attention fusion, nearest-×2 + 3×3 conv decoders; the same parameter count, checked), in
PyTorch's own layouts (NCHW, NCDHW), the same loss terms (MSE, SSIM as `dm_pix`, gradient
difference; the VGG perceptual term only if the config turns it on, which the twin does not
model) and `torch.optim.AdamW` with gradient clipping and the same schedule, eager, on
`torch.set_num_threads(os.cpu_count())` threads; also under `torch.compile` when it compiles.

Printed: per step, ms and samples/s of each side and the ratio JAX speed / torch speed (medians
of `--rounds` alternating rounds of `--steps` steps each); the forward + backward time of each
block of the model on both sides (encoder, temporal transformer, motion encoder, fusion +
decoders + loss, optimizer), each a separately jitted function on JAX; the top ops of a
`jax.profiler` trace of the JAX train step (the XLA:CPU thunks, per step, with what each fusion
holds and the part of the model its Python stack points to, summed per kind and per part) and
of a `torch.profiler` trace of the eager twin (self CPU time). `--sweep` reruns the train-step
comparison in subprocesses under XLA:CPU flag variants (`XLA_FLAGS`) and config variants that
keep the model's math (e.g. `conv3d=native`).

The other processes' CPU load is printed before and after the measurements: on shared cores
PyTorch's OpenMP threads slow down far more than XLA's (3.2 s instead of 0.28 s a train step
with one of the 2 cores busy elsewhere), so only a quiet machine gives fair ratios.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from absl import flags
from flax import nnx
from torch import nn
from torch.nn import functional as F  # noqa: N812  (PyTorch's own convention)

from jaxvad import allocator, cli, distributed, inference, losses, model
from jaxvad import train as train_lib
from jaxvad.bench.train import random_batch
from jaxvad.config import ConfigError

Runner = Callable[[int], None]  # Runs n steps and waits for their results.

_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# XLA:CPU flags (and config fields that keep the model's math) that `--sweep` measures.
SWEEP: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("default", "", ()),
    ("YNN: convolutions only", f"{_YNN}individual_convolution", ()),
    ("YNN: dots only", f"{_YNN}individual_dot", ()),
    ("YNN: convolutions + dots", f"{_YNN}individual_convolution,individual_dot", ()),
    ("YNN: + elementwise", f"{_YNN}+eltwise", ()),
    ("single-threaded Eigen", "--xla_cpu_multi_thread_eigen=false", ()),
    ("legacy fusion emitters", "--xla_cpu_use_fusion_emitters=false", ()),
    (
        "concurrency scheduler",
        "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
        (),
    ),
    ("fast math (not bitwise)", "--xla_cpu_enable_fast_math=true", ()),
    # The default splits the batch over one CPU device per core (`config.mesh.cpu_devices`);
    # this is the one device of XLA's threads across the cores (the default until stop 41).
    ("one CPU device", "", ("--config.mesh.cpu_devices=1",)),
    ("conv3d=native", "", ("--config.model.conv3d=native",)),
)


# ---------------------------------------------------------------------------------------------
# The PyTorch twin.


class Attention(nn.Module):
    """`layers.MultiHeadAttention`: q, k, v, out projections and SDPA."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        context = x if context is None else context
        B, L, D = x.shape
        S, H = context.shape[1], self.heads
        q = self.query(x).view(B, L, H, D // H).transpose(1, 2)
        k = self.key(context).view(B, S, H, D // H).transpose(1, 2)
        v = self.value(context).view(B, S, H, D // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """`layers.TransformerBlock`: pre-LN attention and GELU MLP residual branches."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, causal: bool):
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), causal=self.causal))
        return x + self.drop(self.mlp(self.norm2(x)))


class Decoder(nn.Module):
    """`layers.ConvDecoder` in NCHW: per stage nearest ×2, 3×3 conv, GELU; a 3×3 conv head."""

    def __init__(self, in_ch: int, channels: Sequence[int], out_ch: int):
        super().__init__()
        widths = [in_ch, *channels]
        self.stages = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(widths)
        )
        self.head = nn.Conv2d(widths[-1], out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.stages:
            x = F.gelu(conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.head(x)


class TorchPredictor(nn.Module):
    """`jaxvad.model.Predictor` in PyTorch: the same layers, widths and parameter count.

    Inputs as the JAX model's (`[B, T, H, W, C]` frames in [-1, 1], `[B, T, H, W, 2]` flows);
    inside, tokens are `[B, L, D]`, the motion encoder NCDHW, the decoders NCHW (PyTorch's own
    layouts). Outputs NCHW.
    """

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        history: int,
        patch: int,
        width: int,
        spatial_depth: int,
        temporal_depth: int,
        heads: int,
        mlp_ratio: float,
        motion_channels: Sequence[int],
        decoder_channels: Sequence[int],
        dropout: float,
    ):
        super().__init__()
        self.patch, self.grid, self.width = patch, image_size // patch, width
        tokens = self.grid**2
        self.patch_embed = nn.Linear(patch * patch * channels, width)
        self.space_position = nn.Parameter(0.02 * torch.randn(tokens, width))
        self.spatial_blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, dropout, False) for _ in range(spatial_depth)
        )
        self.spatial_norm = nn.LayerNorm(width, eps=1e-6)
        self.time_position = nn.Parameter(0.02 * torch.randn(history, width))
        self.temporal_blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, dropout, True) for _ in range(temporal_depth)
        )
        self.temporal_norm = nn.LayerNorm(width, eps=1e-6)
        widths = [2, *motion_channels]
        self.motion_convs = nn.ModuleList(
            nn.Conv3d(a, b, 3, stride=(1, 2, 2), padding=1) for a, b in itertools.pairwise(widths)
        )
        self.motion_proj = nn.Linear(widths[-1], width)
        self.motion_space_position = nn.Parameter(0.02 * torch.randn(tokens, width))
        self.motion_time_position = nn.Parameter(0.02 * torch.randn(history, width))
        self.fusion_query_norm = nn.LayerNorm(width, eps=1e-6)
        self.fusion_motion_norm = nn.LayerNorm(width, eps=1e-6)
        self.cross_attention = Attention(width, heads)
        self.gate = nn.Linear(width, width)
        self.fusion_drop = nn.Dropout(dropout)
        self.rgb_decoder = Decoder(width, decoder_channels, channels)
        self.flow_decoder = Decoder(width, decoder_channels, 2)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """`[B, T, H, W, C]` → spatial tokens `[B, T, N, D]`."""
        B, T, _, _, C = frames.shape
        P, g = self.patch, self.grid
        patches = frames.reshape(B * T, g, P, g, P, C).permute(0, 1, 3, 2, 4, 5)
        x = self.patch_embed(patches.reshape(B * T, g * g, P * P * C)) + self.space_position
        for block in self.spatial_blocks:
            x = block(x)
        return self.spatial_norm(x).reshape(B, T, g * g, self.width)

    def temporal(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, T, N, D]` → causal features `[B, T, N, D]`."""
        B, T, N, D = tokens.shape
        x = tokens.transpose(1, 2).reshape(B * N, T, D) + self.time_position[:T]
        for block in self.temporal_blocks:
            x = block(x)
        return self.temporal_norm(x).reshape(B, N, T, D).transpose(1, 2)

    def encode_motion(self, flows: torch.Tensor) -> torch.Tensor:
        """`[B, T, H, W, 2]` → motion features `[B, K, T, h, w]` (NCDHW)."""
        x = flows.permute(0, 4, 1, 2, 3)
        for conv in self.motion_convs:
            x = F.gelu(conv(x))
        return x

    def decode(
        self, appearance: torch.Tensor, motion_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion and decoders: `[B, N, D]`, `[B, K, T, h, w]` → frame, flow (NCHW)."""
        B, _, T, h, w = motion_features.shape
        N, D = h * w, self.width
        motion = self.motion_proj(motion_features.permute(0, 2, 3, 4, 1)).reshape(B, T, N, D)
        motion = motion + self.motion_space_position + self.motion_time_position[:T, None]
        gate = torch.sigmoid(self.gate(motion.mean(dim=1)))
        attended = self.cross_attention(
            self.fusion_query_norm(appearance),
            self.fusion_motion_norm(motion.reshape(B, T * N, D)),
        )
        fused = appearance + gate * self.fusion_drop(attended)
        grid = fused.transpose(1, 2).reshape(B, D, h, w)
        return torch.tanh(self.rgb_decoder(grid)), self.flow_decoder(grid)

    def forward(
        self, frames: torch.Tensor, flows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        appearance = self.temporal(self.encode_frames(frames))[:, -1]
        return self.decode(appearance, self.encode_motion(flows))


def check_model(config: ml_collections.ConfigDict) -> None:
    if config.model.name != "predictor":
        raise ConfigError(
            f"the PyTorch twin models the predictor only, not config.model.name="
            f"{config.model.name!r}"
        )


def make_twin(config: ml_collections.ConfigDict) -> TorchPredictor:
    """The twin of `config`'s model (the predictor only)."""
    check_model(config)
    m = config.model
    return TorchPredictor(
        image_size=model.image_size(config),
        channels=config.data.channels,
        history=config.history,
        patch=m.patch,
        width=m.width,
        spatial_depth=m.spatial_depth,
        temporal_depth=m.temporal_depth,
        heads=m.heads,
        mlp_ratio=m.mlp_ratio,
        motion_channels=tuple(m.motion_channels),
        decoder_channels=tuple(m.decoder_channels),
        dropout=m.dropout,
    )


def _ssim_filter(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """`dm_pix.ssim`'s normalised 1D Gaussian."""
    hw = size // 2
    shift = (2 * hw - size + 1) / 2
    filt = torch.exp(-0.5 * ((torch.arange(size) - hw + shift) / sigma) ** 2)
    return filt / filt.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of NCHW images in [0, 1] → `[B]`, as `dm_pix.ssim` (separable 'valid'
    Gaussian blur, clipped (co)variances)."""
    C, k = a.shape[1], filt.numel()
    wx, wy = filt.view(1, 1, 1, k).repeat(C, 1, 1, 1), filt.view(1, 1, k, 1).repeat(C, 1, 1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, wx, groups=C), wy, groups=C)

    mu0, mu1 = blur(a), blur(b)
    mu00, mu11, mu01 = mu0 * mu0, mu1 * mu1, mu0 * mu1
    eps = torch.finfo(torch.float32).eps ** 2
    s00 = torch.clamp(blur(a * a) - mu00, min=eps)
    s11 = torch.clamp(blur(b * b) - mu11, min=eps)
    s01 = blur(a * b) - mu01
    s01 = torch.sign(s01) * torch.minimum(torch.sqrt(s00 * s11), s01.abs())
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu01 + c1) * (2 * s01 + c2)) / ((mu00 + mu11 + c1) * (s00 + s11 + c2))
    return value.mean(dim=(1, 2, 3))


def twin_loss_terms(
    frame: torch.Tensor,
    flow: torch.Tensor,
    target_frame: torch.Tensor,
    target_flow: torch.Tensor,
    filt: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """`losses.loss_terms` without the perceptual term, NCHW."""
    pred01, target01 = (frame + 1) / 2, (target_frame + 1) / 2
    gradient = sum(
        (frame.diff(dim=d).abs() - target_frame.diff(dim=d).abs()).abs().mean() for d in (3, 2)
    )
    return {
        "rgb": F.mse_loss(frame, target_frame),
        "flow": F.mse_loss(flow, target_flow),
        "ssim": (1 - ssim(pred01, target01, filt)).mean(),
        "gradient": gradient,
    }


def torch_inputs(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The arrays of a `random_batch` as tensors (no copies)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def model_space(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`model.model_inputs` in PyTorch, targets NCHW."""
    frames = lambda x: x.float() / 127.5 - 1.0  # noqa: E731
    return {
        "frames": frames(batch["frames"]),
        "flows": batch["flows"].float(),
        "target_frame": frames(batch["target_frame"]).permute(0, 3, 1, 2),
        "target_flow": batch["target_flow"].float().permute(0, 3, 1, 2),
    }


def warmup_cosine(config: ml_collections.ConfigDict, total: int) -> Callable[[int], float]:
    """The factor of `make_optimizer`'s schedule at a step (torch's LambdaLR)."""
    opt = config.optimizer
    warmup = min(opt.warmup_steps, total // 2)

    def factor(step: int) -> float:
        if opt.schedule != "cosine":
            return 1.0
        if step < warmup:
            return step / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class TwinTrainer:
    """The twin's train step (forward, loss, backward, clipping, AdamW, schedule), eager or
    with `torch.compile`d forward + loss."""

    def __init__(self, config: ml_collections.ConfigDict, twin: TorchPredictor, compiled: bool):
        opt = config.optimizer
        self.twin = twin
        self.weights = {k: config.loss[k] for k in ("rgb", "flow", "ssim", "gradient")}
        self.clip = opt.grad_clip_norm
        kind = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        extra = {"weight_decay": opt.weight_decay} if opt.name == "adamw" else {}
        self.optimizer = kind(
            twin.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=1e-8, **extra
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config, 1000)
        )
        self.filt = _ssim_filter()
        self.loss = torch.compile(self._loss) if compiled else self._loss

    def _loss(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        frame, flow = self.twin(inputs["frames"], inputs["flows"])
        terms = twin_loss_terms(
            frame, flow, inputs["target_frame"], inputs["target_flow"], self.filt
        )
        return sum(self.weights[k] * v for k, v in terms.items() if self.weights[k] != 0)

    def step(self, batch: Mapping[str, torch.Tensor]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model_space(batch))
        loss.backward()
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.twin.parameters(), self.clip)
        self.optimizer.step()
        self.schedule.step()
        return loss.item()


@torch.inference_mode()
def twin_errors(twin: TorchPredictor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The evaluation step (`inference.error_step`, maps off): per-sample rgb and flow errors."""
    inputs = model_space(batch)
    frame, flow = twin(inputs["frames"], inputs["flows"])
    rgb = (frame - inputs["target_frame"]).square().mean(dim=1).mean(dim=(1, 2))
    return torch.stack([rgb, (flow - inputs["target_flow"]).square().mean(dim=(1, 2, 3))])


@torch.inference_mode()
def twin_stream(
    twin: TorchPredictor, cache: torch.Tensor, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The streaming step (`inference.stream_step`): errors of the new frame from the cached
    past frames' tokens, and the cache with the new frame's tokens pushed."""
    inputs = model_space({"frames": batch["target_frame"][:, None], **batch})
    appearance = twin.temporal(cache)[:, -1]
    frame, flow = twin.decode(appearance, twin.encode_motion(inputs["flows"]))
    rgb = (frame - inputs["target_frame"]).square().mean(dim=(1, 2, 3))
    errors = torch.stack([rgb, (flow - inputs["target_flow"]).square().mean(dim=(1, 2, 3))])
    new = twin.encode_frames(inputs["frames"])[:, 0]
    rolled = torch.cat([cache[:, 1:], new[:, None]], dim=1)
    push = batch["push"].view(-1, 1, 1, 1)
    return errors, torch.where(push, rolled, cache)


# ---------------------------------------------------------------------------------------------
# Timing.


def interleaved(runners: Mapping[str, Runner], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each runner: after a 2-step warm-up each, `rounds` rounds in
    which every runner runs `steps` steps (the order reversed every other round)."""
    for run in runners.values():
        run(2)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runners[name](steps)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def _jax_runner(fn: Callable[[], Any]) -> Runner:
    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = fn()
        jax.block_until_ready(out)

    return run


def _torch_runner(fn: Callable[[], Any]) -> Runner:
    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


def report(what: str, batch: int, seconds: Mapping[str, float]) -> None:
    """One line per side, then JAX speed / each torch variant's speed."""
    print(f"{what} (batch {batch}):")
    for name, s in seconds.items():
        print(f"  {name:<16} {s * 1e3:8.1f} ms  {batch / s:8.1f} samples/s")
    for name, s in seconds.items():
        if name != "JAX":
            print(f"  ratio JAX / {name}: {s / seconds['JAX']:.2f}× (JAX speed / torch speed)")


# ---------------------------------------------------------------------------------------------
# Profiles.

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_BORING = {"parameter", "bitcast", "constant", "broadcast", "get-tuple-element", "tuple"}
# The part of the model an op belongs to: the first of these functions on its stack (the
# backward pass's ops carry their forward op's stack), else "optimizer + metrics" outside
# the loss function.
PARTS = (
    ("ssim", "loss: SSIM"),
    ("gradient_difference_loss", "loss: gradient"),
    ("mse", "loss: MSE"),
    ("Predictor.encode_frames", "encoder"),
    ("Predictor.temporal", "temporal"),
    ("Predictor.encode_motion", "motion encoder"),
    ("ConvDecoder.__call__", "decoders"),
    ("Predictor.fuse", "fusion"),
    ("model_inputs", "inputs"),
)


class Hlo:
    """An optimized HLO module's text, indexed: its instructions (name → shape, opcode, rest of
    the line), computations (name → body lines) and Python stacks (stack frame id → function
    names, innermost first)."""

    def __init__(self, text: str):
        self.instructions: dict[str, tuple[str, str, str]] = {}
        self.computations: dict[str, list[str]] = collections.defaultdict(list)
        current = None
        for line in text.splitlines():
            if (m := _COMPUTATION.match(line)) and line.rstrip().endswith("{"):
                current = m.group(1)
            elif line.startswith("}"):
                current = None
            elif m := _INSTRUCTION.match(line):
                self.instructions[m.group(1)] = (m.group(2), m.group(3), m.group(4))
                if current:
                    self.computations[current].append(line)

        def table(header: str, pattern: str) -> list[tuple[str, ...]]:
            """The rows of the table `header` that the module's text ends with."""
            section = text.split(f"\n{header}\n")[-1].split("\n\n")[0] if header in text else ""
            return re.findall(pattern, section, re.M)

        names = dict(table("FunctionNames", r'^(\d+) "(.*)"$'))
        locations = dict(
            table("FileLocations", r"^(\d+) \{file_name_id=\d+ function_name_id=(\d+)")
        )
        # Printed frame ids count from 1, their parents' from 0.
        self.frames = {
            int(i): (names.get(locations.get(loc, ""), "?"), int(parent) - 1)
            for i, loc, parent in table(
                "StackFrames", r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)\}"
            )
        }

    def stack(self, frame: int) -> list[str]:
        functions, seen = [], set()
        while frame in self.frames and frame not in seen:
            seen.add(frame)
            name, frame = self.frames[frame]
            functions.append(name)
        return functions

    def part(self, body: Sequence[str]) -> str:
        """The model part of the ops of `body` (their convolution or dot's stack first)."""
        ids = [
            (not re.search(r" (convolution|dot)\(", line), int(m.group(1)))
            for line in body
            if (m := re.search(r"stack_frame_id=(\d+)", line))
        ]
        if not ids:  # XLA's own ops, e.g. the convolutions of kernel gradients.
            return "(no stack)"
        stack = self.stack(min(ids)[1])
        if "train_step.<locals>.loss_fn" not in stack and "model_inputs" not in stack:
            return "optimizer + metrics"
        return next((part for fn, part in PARTS if fn in stack), "other")

    def describe(self, name: str) -> tuple[str, str, str, str]:
        """(kind, part, output shape, contents) of the instruction `name`."""
        shape, opcode, rest = self.instructions[name]
        body = [f"%{name} = {shape} {opcode}({rest}"]
        if called := re.search(r"calls=%([\w.\-]+)", rest):
            body = self.computations.get(called.group(1), body)
        ops: collections.Counter[str] = collections.Counter()
        windows = []
        for line in body:
            if not (m := _INSTRUCTION.match(line)):
                continue
            if m.group(3) not in _BORING:
                ops[m.group(3)] += 1
            if m.group(3) == "convolution" and (w := re.search(r"window=\{([^}]*)", line)):
                windows.append(f"{m.group(2).split('{')[0]} {w.group(1)}")
            elif m.group(3) == "dot":
                windows.append(m.group(2).split("{")[0])
        kinds = (
            ("convolution", {"convolution"}),
            ("dot", {"dot"}),
            ("transpose/copy", {"transpose", "copy"}),
            ("reduction", {"reduce", "reduce-window", "select-and-scatter"}),
        )
        kind = next((k for k, o in kinds if ops.keys() & o), "elementwise/other")
        content = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in ops.most_common(3))
        if windows:
            content += "; " + " | ".join(windows[:2])
        return kind, self.part(body), shape.split("{")[0], content


def jax_profile(run: Runner, hlo_text: str, steps: int, top: int) -> None:
    """The top XLA:CPU thunks of `steps` steps of `run` (a `jax.profiler` trace), per step,
    and their sums per kind of op and per part of the model."""
    hlo = Hlo(hlo_text)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        start = time.perf_counter()
        run(steps)
        wall = (time.perf_counter() - start) / steps * 1e3
        jax.profiler.stop_trace()
        trace = next(Path(tmp).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(trace))
    totals: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLA"):
                for event in line.events:
                    if event.name in hlo.instructions:
                        totals[event.name] += event.duration_ns / steps / 1e6
    whole = sum(totals.values())
    print(
        f"JAX train step, XLA:CPU ops (jax.profiler, {steps} steps of {wall:.0f} ms wall; CPU "
        f"ms per step summed over threads: {whole:.0f} ms in {len(totals)} ops):"
    )
    print(f"  {'op':<27} {'ms':>6} {'%':>5}  {'kind':<15} {'part':<15} {'shape':<19} contents")
    by_kind: collections.Counter[str] = collections.Counter()
    by_part: collections.Counter[str] = collections.Counter()
    for name, ms in totals.items():
        kind, part, *_ = hlo.describe(name)
        by_kind[kind] += ms
        by_part[part] += ms
    for name, ms in totals.most_common(top):
        kind, part, shape, content = hlo.describe(name)
        print(
            f"  {name[:27]:<27} {ms:6.2f} {ms / whole:5.1%}  {kind:<15} {part:<15} "
            f"{shape:<19} {content[:90]}"
        )
    for title, counts in (("by kind", by_kind), ("by part", by_part)):
        print(f"  {title}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in counts.most_common()))


def torch_profile(step: Callable[[], Any], steps: int, top: int) -> None:
    """The top ops of `steps` eager twin steps by self CPU time (`torch.profiler`)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    whole = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    print(
        f"torch eager train step, ops by self CPU time (torch.profiler, {steps} steps; "
        f"total {whole:.1f} ms per step):"
    )
    print(f"  {'op':<44} {'ms':>7} {'%':>5} {'calls':>6}")
    for e in events[:top]:
        ms = e.self_cpu_time_total / steps / 1e3
        print(f"  {e.key[:44]:<44} {ms:7.2f} {ms / whole:5.1%} {e.count // steps:6d}")


# ---------------------------------------------------------------------------------------------
# Per-block forward + backward.


def block_runners(
    config: ml_collections.ConfigDict, batch: Mapping[str, np.ndarray], twin: TorchPredictor
) -> dict[str, dict[str, Runner]]:
    """Per block of the model: JAX (a jitted forward + backward of that block alone) and torch
    runners on the train batch's shapes (gradients of the block's parameters and inputs)."""
    net = model.make_model(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(net, nnx.Param)
    inputs = jax.device_put(model.model_inputs(batch))
    weights = {k: config.loss[k] for k in ("rgb", "flow", "ssim", "gradient")}

    def method(name: str) -> Callable[..., jax.Array]:
        return lambda p, *xs: getattr(nnx.merge(graphdef, p), name)(*xs)

    tokens = jax.jit(method("encode_frames"))(params, inputs["frames"])
    appearance = jax.jit(method("temporal"))(params, tokens)[:, -1]
    motion = jax.jit(method("encode_motion"))(params, inputs["flows"])

    def decode_loss(p: nnx.State, app: jax.Array, mot: jax.Array) -> jax.Array:
        frame, flow = nnx.merge(graphdef, p).decode(app, mot)
        terms = losses.loss_terms(
            frame, flow, inputs["target_frame"], inputs["target_flow"], vgg=None
        )
        return losses.total_loss(terms, weights)

    def grad_of(fn: Callable[..., jax.Array], *xs: jax.Array) -> Runner:
        cotangent = jnp.ones(jax.eval_shape(fn, params, *xs).shape)
        loss = lambda p, *a: jnp.vdot(fn(p, *a), cotangent)  # noqa: E731
        compiled = jax.jit(jax.grad(loss, argnums=tuple(range(len(xs) + 1))))
        return _jax_runner(lambda: compiled(params, *xs))

    tx, _ = train_lib.make_optimizer(config, 1000)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def update(p: nnx.State, s: Any, g: nnx.State) -> tuple[nnx.State, Any]:
        updates, s = tx.update(g, s, p)
        return jax.tree.map(jnp.add, p, updates), s

    jax_blocks = {
        "encoder": grad_of(method("encode_frames"), inputs["frames"]),
        "temporal": grad_of(method("temporal"), tokens),
        "motion encoder": grad_of(method("encode_motion"), inputs["flows"]),
        "fusion+decoders+loss": grad_of(decode_loss, appearance, motion),
        "optimizer": _jax_runner(lambda: update(params, opt_state, grads)),
    }

    tb = model_space(torch_inputs(batch))
    trainer = TwinTrainer(config, twin, compiled=False)
    with torch.no_grad():
        t_tokens = twin.encode_frames(tb["frames"])
        t_app = twin.temporal(t_tokens)[:, -1]
        t_motion = twin.encode_motion(tb["flows"])

    def backward(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> Runner:
        def step() -> None:
            twin.zero_grad(set_to_none=True)
            args = [x.detach().requires_grad_(x.is_floating_point()) for x in xs]
            fn(*args).sum().backward()

        return _torch_runner(step)

    def t_decode_loss(app: torch.Tensor, mot: torch.Tensor) -> torch.Tensor:
        frame, flow = twin.decode(app, mot)
        terms = twin_loss_terms(frame, flow, tb["target_frame"], tb["target_flow"], trainer.filt)
        return sum(weights[k] * v for k, v in terms.items())

    for p in twin.parameters():
        p.grad = torch.ones_like(p)

    def t_update() -> None:
        nn.utils.clip_grad_norm_(twin.parameters(), trainer.clip)
        trainer.optimizer.step()

    torch_blocks = {
        "encoder": backward(lambda f: twin.encode_frames(f), tb["frames"].detach()),
        "temporal": backward(lambda t: twin.temporal(t)[:, -1], t_tokens),
        "motion encoder": backward(twin.encode_motion, tb["flows"]),
        "fusion+decoders+loss": backward(t_decode_loss, t_app, t_motion),
        "optimizer": _torch_runner(t_update),
    }
    return {name: {"JAX": jax_blocks[name], "torch": torch_blocks[name]} for name in jax_blocks}


# ---------------------------------------------------------------------------------------------
# The benchmark.


def param_counts(params: Any, twin: TorchPredictor) -> tuple[int, int]:
    jax_count = sum(x.size for x in jax.tree.leaves(params))
    torch_count = sum(p.numel() for p in twin.parameters())
    print(f"parameters: JAX {jax_count:,}, torch twin {torch_count:,}")
    if abs(jax_count - torch_count) > 0.01 * jax_count:
        raise AssertionError(f"parameter counts differ by > 1 %: {jax_count} vs {torch_count}")
    return jax_count, torch_count


def try_compile(trainer: TwinTrainer, batch: Mapping[str, torch.Tensor], budget: float) -> bool:
    """Whether the `torch.compile`d step compiles and runs here (its time printed)."""
    start = time.perf_counter()
    try:
        trainer.step(batch)
        trainer.step(batch)
    except Exception as e:  # Any failure of inductor: skipped, with the reason.
        print(f"torch.compile: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return False
    seconds = time.perf_counter() - start
    if seconds > budget:
        print(f"torch.compile: skipped (compiling took {seconds:.0f} s > {budget:.0f} s)")
        return False
    print(f"torch.compile: first two steps (compilation) {seconds:.1f} s")
    return True


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores busy over `seconds` while this process sleeps (other processes' load), from
    /proc/stat; None where there is none."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)  # Busy, total (idle, iowait).

    try:
        busy, total = sample()
        time.sleep(seconds)
        busy2, total2 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy2 - busy) / max(total2 - total, 1) * (os.cpu_count() or 1)


def check_quiet(when: str) -> None:
    """Prints the other processes' CPU load; warns when it would distort the comparison."""
    busy = busy_cores()
    if busy is None:
        return
    print(f"other processes {when}: {busy:.2f} cores busy")
    if busy > 0.2:
        print(
            "warning: PyTorch's OpenMP threads slow down far more than XLA's when cores are "
            "shared (up to 10× at 2 threads), so these ratios flatter JAX: rerun on a quiet "
            "machine"
        )


def benchmark(config: ml_collections.ConfigDict, opts: Mapping[str, Any]) -> None:
    check_model(config)
    threads = os.cpu_count() or 1
    torch.set_num_threads(opts["torch_threads"] or threads)
    torch.manual_seed(0)
    device = jax.devices()[0]
    size, T, B = model.image_size(config), config.history, config.train.batch_size
    print(
        f"machine: {platform.node()}, {threads} cores, {jax.device_count()} × "
        f"{device.device_kind}; jax "
        f"{jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {allocator.describe()}"
    )
    check_quiet("before")
    print(
        f"model {config.model.name}, {size}×{size}, T={T}, conv3d={config.model.conv3d}, "
        f"dtype {config.model.dtype}; loss terms "
        + ", ".join(f"{k}×{config.loss[k]:g}" for k in ("rgb", "flow", "ssim", "gradient"))
        + (", perceptual (JAX only)" if config.loss.vgg16 else "; perceptual off")
        + f"; optimizer {config.optimizer.name}, clip {config.optimizer.grad_clip_norm:g}"
    )

    # --- JAX, as the trainer builds it.
    mesh = distributed.make_mesh(config.mesh.fsdp)
    run = train_lib.build(config, mesh, steps=1000)
    state = run.init()
    np_batch = random_batch(config, B)
    batch = distributed.global_batch(np_batch, run.data_sharding)
    key = jax.random.key(0)
    start = time.perf_counter()
    step = run.jitted_step.lower(state, batch, key, run.vgg).compile()
    print(f"JAX train step compiled in {time.perf_counter() - start:.1f} s")
    twin = make_twin(config)
    param_counts(state["params"], twin)

    def jax_train() -> Any:
        nonlocal state
        state, metrics = step(state, batch, key, run.vgg)
        return metrics["loss"]

    # --- The twin.
    t_batch = torch_inputs(np_batch)
    eager = TwinTrainer(config, twin, compiled=False)
    runners = {
        "JAX": _jax_runner(jax_train),
        "torch eager": _torch_runner(lambda: eager.step(t_batch)),
    }
    if opts["torch_compile"]:
        compiled_twin = make_twin(config)
        compiled = TwinTrainer(config, compiled_twin, compiled=True)
        if try_compile(compiled, t_batch, opts["compile_budget"]):
            runners["torch.compile"] = _torch_runner(lambda: compiled.step(t_batch))
    steps, rounds = opts["steps"], opts["rounds"]
    report(f"train step ({size}×{size}, T={T})", B, interleaved(runners, steps, rounds))
    if opts["only_train"]:
        return

    # --- Evaluation step: forward + per-frame errors at the eval batch size, laid out on the
    # mesh as `inference.ErrorScorer` lays it out (parameters replicated, batch split).
    net = model.make_model(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(net, nnx.Param)
    params = jax.device_put(params, distributed.state_shardings(params, mesh, config.mesh.rules))
    E = config.eval.batch_size
    eval_np = random_batch(config, E)
    full = eval_np | {
        **{k: np.zeros(E, np.int32) for k in ("video_index", "frame_index", "label")},
        "scored": np.ones(E, bool),
        "valid": np.ones(E, bool),
    }
    full = distributed.global_batch(full, run.data_sharding)
    error_step = jax.jit(functools.partial(inference.error_step, graphdef=graphdef, maps=False))
    error_c = error_step.lower(params, full).compile()
    eval_t = torch_inputs(eval_np)
    twin.eval()
    report(
        "evaluation step (forward + per-frame errors)",
        E,
        interleaved(
            {
                "JAX": _jax_runner(lambda: error_c(params, full)),
                "torch eager": _torch_runner(lambda: twin_errors(twin, eval_t)),
            },
            steps,
            rounds,
        ),
    )

    # --- Streaming step (jaxvad.watch), per camera batch, padded to a multiple of the batch
    # shards as `watch.stream.StreamScorer` pads its slots.
    shards = run.data_sharding.num_devices
    for cams in opts["cameras"]:
        slots = -(-cams // shards) * shards
        sb = random_batch(config, slots)
        shape = jax.eval_shape(net.cached_frame, jnp.zeros(sb["target_frame"].shape))
        cache = jax.device_put(
            jnp.zeros((slots, T, *shape.shape[1:]), shape.dtype), run.data_sharding
        )
        tick = {k: sb[k] for k in ("flows", "target_frame", "target_flow")}
        tick = distributed.global_batch(tick | {"push": np.ones(slots, bool)}, run.data_sharding)
        stream = jax.jit(functools.partial(inference.stream_step, graphdef=graphdef))
        stream_c = stream.lower(params, cache, tick).compile()
        # The twin scores the cameras alone.
        t_cache = torch.zeros((cams, *cache.shape[1:]))
        t_tick = torch_inputs(
            {k: sb[k][:cams] for k in ("flows", "target_frame", "target_flow")}
            | {"push": np.ones(cams, bool)}
        )
        report(
            f"streaming step (per new frame, {cams} camera(s))",
            cams,
            interleaved(
                {
                    "JAX": _jax_runner(lambda c=stream_c, a=cache, t=tick: c(params, a, t)),
                    "torch eager": _torch_runner(
                        lambda c=t_cache, t=t_tick: twin_stream(twin, c, t)
                    ),
                },
                steps * 4,
                rounds,
            ),
        )
    twin.train()

    # --- Per block, forward + backward.
    if opts["blocks"]:
        print(f"per block, forward + backward at batch {B} (each block jitted on its own):")
        print(f"  {'block':<22} {'JAX ms':>8} {'torch ms':>9} {'JAX/torch speed':>16}")
        total = {"JAX": 0.0, "torch": 0.0}
        for name, pair in block_runners(config, np_batch, twin).items():
            s = interleaved(pair, steps, rounds)
            total = {k: total[k] + s[k] for k in total}
            print(
                f"  {name:<22} {s['JAX'] * 1e3:8.1f} {s['torch'] * 1e3:9.1f} "
                f"{s['torch'] / s['JAX']:15.2f}×"
            )
        print(
            f"  {'sum':<22} {total['JAX'] * 1e3:8.1f} {total['torch'] * 1e3:9.1f} "
            f"{total['torch'] / total['JAX']:15.2f}×"
        )

    # --- Profiles.
    check_quiet("after the measurements")
    if opts["profile"]:
        jax_profile(_jax_runner(jax_train), step.as_text(), opts["profile_steps"], opts["top"])
        torch_profile(lambda: eager.step(t_batch), opts["profile_steps"], opts["top"])


def sweep(argv: Sequence[str], steps: int, rounds: int) -> None:
    """The train-step comparison of each `SWEEP` variant, each in a fresh subprocess."""
    passed = [a for a in argv[1:] if a.startswith("--config")]
    print(f"XLA:CPU variants (train step, {rounds} rounds × {steps} steps, interleaved):")
    print(f"  {'variant':<30} {'JAX ms':>8} {'torch ms':>9} {'JAX/torch':>10}")
    for label, xla_flags, extra in SWEEP:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
        cmd = [
            sys.executable, "-m", "jaxvad.bench.torch_twin", *passed, *extra,
            f"--steps={steps}", f"--rounds={rounds}", "--only_train", "--notorch_compile",
        ]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        ms = re.findall(r"^\s+(JAX|torch eager)\s+([\d.]+) ms", out.stdout, re.M)
        if out.returncode or len(ms) < 2:
            tail = (out.stderr.strip().splitlines() or ["?"])[-1][:100]
            print(f"  {label:<30} failed: {tail}")
            continue
        j, t = float(ms[0][1]), float(ms[1][1])
        print(f"  {label:<30} {j:8.1f} {t:9.1f} {t / j:9.2f}×")


def main() -> None:
    config = cli.define_config_flag()
    steps = flags.DEFINE_integer("steps", 5, "timed steps per round")
    rounds = flags.DEFINE_integer("rounds", 5, "interleaved rounds (medians reported)")
    cameras = flags.DEFINE_list("cameras", ["1", "8"], "streaming batch sizes")
    torch_threads = flags.DEFINE_integer("torch_threads", 0, "torch threads (0: the CPU count)")
    torch_compile = flags.DEFINE_bool("torch_compile", True, "also time torch.compile's twin")
    budget = flags.DEFINE_float("compile_budget", 180.0, "skip torch.compile beyond this (s)")
    blocks = flags.DEFINE_bool("blocks", True, "per-block forward + backward table")
    profile = flags.DEFINE_bool("profile", True, "per-op profiles of both train steps")
    profile_steps = flags.DEFINE_integer("profile_steps", 3, "steps of each profile")
    top = flags.DEFINE_integer("top", 15, "rows of each profile")
    only_train = flags.DEFINE_bool("only_train", False, "the train-step comparison only")
    do_sweep = flags.DEFINE_bool("sweep", False, "compare XLA:CPU flag variants (subprocesses)")

    def command() -> None:
        if do_sweep.value:
            sweep(sys.argv, steps.value, rounds.value)
            return
        benchmark(
            config.value,
            {
                "steps": steps.value,
                "rounds": rounds.value,
                "cameras": [int(c) for c in cameras.value],
                "torch_threads": torch_threads.value,
                "torch_compile": torch_compile.value,
                "compile_budget": budget.value,
                "blocks": blocks.value,
                "profile": profile.value,
                "profile_steps": profile_steps.value,
                "top": top.value,
                "only_train": only_train.value,
            },
        )

    cli.run(
        command,
        config=config,
        usage="python -m jaxvad.bench.torch_twin --config=FILE [--steps=N] [--rounds=N] "
        "[--sweep] [--config.a.b=v ...]",
    )


if __name__ == "__main__":
    main()
