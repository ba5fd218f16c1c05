"""The jitted inference of a trained model: per-frame errors of a split, batch by batch, on
a mesh of every device (one process or many).

`error_step` is a pure function of (params, batch) for a graphdef; `ErrorScorer` jits it with
the batch laid out over the mesh, reads a split through the evaluation pipeline (every process
its contiguous shard) and gathers the errors of every frame, in (video, frame) order, into a
`jaxvad.scoring.SplitErrors` on every process; with object samples (`objects=`, a model trained
on them) the same loop gives every object's errors, one row per object, and with `features=`
the model's deep feature of each row (`VadModel.features`) from the same step. The arithmetic that
turns errors into scores is `jaxvad.scoring`'s (and `jaxvad.object_scores`' for objects).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from jaxvad import distributed, model, scoring
from jaxvad.data import pipeline


def error_step(
    params: nnx.State,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    maps: bool,
    features: bool = False,
    errors: bool = True,
) -> dict[str, jax.Array]:
    """Per-sample errors of one evaluation batch (B samples, S×S frames); a pure function.

    Returns `rgb`, `flow` `[B]` float32 (E_rgb, E_flow), the batch's `video_index`,
    `frame_index`, `label` `[B]` int32, `scored`, `valid` `[B]` bool; when `maps`,
    `rgb_map`, `flow_map` `[B, S, S]` float16 (the model's component maps) and `mask`
    `[B, S, S]` uint8; when `features`, `features` `[B, D]` float32 (`VadModel.features`,
    its encoder shared with the maps' in this one program). Without `errors` (then
    `features` and not `maps`): only `features` and the batch's indices; the model's maps
    are not computed (their decoders: 29 % of the step's FLOPs for `ped2_cpu_objects`).
    """
    net = nnx.merge(graphdef, params)
    inputs = model.model_inputs(batch)
    indices = {k: batch[k] for k in ("video_index", "frame_index", "label", "scored", "valid")}
    if not errors:
        if maps or not features:
            raise ValueError("an error step without errors gives the features alone")
        return {"features": net.features(inputs), **indices}
    out = net.maps(inputs)
    rgb_map, flow_map = out["rgb"], out["flow"]
    result = {"rgb": rgb_map.mean(axis=(1, 2)), "flow": flow_map.mean(axis=(1, 2)), **indices}
    if maps:
        result |= {
            "rgb_map": rgb_map.astype(jnp.float16),
            "flow_map": flow_map.astype(jnp.float16),
            "mask": batch["mask"],
        }
    if features:
        result["features"] = net.features(inputs)
    return result


def stream_step(
    params: nnx.State,
    cache: jax.Array,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """One streaming tick of B cameras (`jaxvad.watch.stream`); a pure function.

    `cache` `[B, T, ...]`: each camera's T newest frames' `VadModel.cached_frame`s, oldest
    first; `batch`: `flows` `[B, T, S, S, 2]`, `target_frame` `[B, S, S, C]` uint8 (the new
    frame t), `target_flow`, and `push` `[B]` bool (the cameras with a new frame). Returns the
    errors of frame t from its T past frames (`rgb`, `flow` `[B]` float32, as `error_step`'s)
    and the cache with frame t's `cached_frame` appended for the cameras that `push` (the
    others' unchanged)."""
    net = nnx.merge(graphdef, params)
    inputs = model.model_inputs({"frames": batch["target_frame"][:, None], **batch})
    out = net.maps_from_cache(cache, inputs)
    new = net.cached_frame(inputs["target_frame"]).astype(cache.dtype)
    rolled = jnp.concatenate([cache[:, 1:], new[:, None]], axis=1)
    push = batch["push"].reshape(-1, *([1] * (cache.ndim - 1)))
    errors = {"rgb": out["rgb"].mean(axis=(1, 2)), "flow": out["flow"].mean(axis=(1, 2))}
    return errors, jnp.where(push, rolled, cache)


class ErrorScorer:
    """The jitted `error_step` of a model on a mesh, and the loop over a split.

    Args:
      graphdef: the model's graph (`nnx.split(model, nnx.Param)`).
      mesh, rules: the device mesh and the logical-axis rules (`config.mesh.rules`) that lay
        the batch out (`data_sharding`).
      batch_size: the global batch (`config.eval.batch_size`), split over processes and the
        batch's mesh axes.
      history: T, past frames per sample; channels: the model's input channels.
      read_threads: grain reader threads of the input pipeline.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        mesh: Mesh,
        rules: distributed.Rules,
        *,
        batch_size: int,
        history: int,
        channels: int,
        read_threads: int,
    ):
        rules = tuple(tuple(rule) for rule in rules)
        distributed.check_batch_size(batch_size, mesh, rules, field="eval.batch_size")
        self.batch_size = batch_size
        self.history = history
        self.channels = channels
        self.read_threads = read_threads
        self.data_sharding = distributed.batch_sharding(mesh, rules)
        self._steps = {
            (maps, features, errors): jax.jit(
                functools.partial(
                    error_step, graphdef=graphdef, maps=maps, features=features, errors=errors
                )
            )
            for maps, features, errors in (
                (False, False, True),
                (False, True, True),
                (True, False, True),
                (True, True, True),
                (False, True, False),
            )
        }

    def step(
        self,
        params: nnx.State,
        batch: Mapping[str, jax.Array],
        *,
        maps: bool,
        features: bool = False,
        errors: bool = True,
    ) -> dict[str, jax.Array]:
        """The jitted `error_step` on a global batch (laid out with `data_sharding`)."""
        return self._steps[maps, features, errors](params, batch)

    def split_errors(
        self,
        params: nnx.State,
        table: pipeline.FrameTable,
        *,
        labels: bool,
        maps: bool,
        desc: str,
        objects: pipeline.ObjectCrops | None = None,
        features: bool = False,
        errors: bool = True,
        progress: bool = True,
    ) -> tuple[scoring.SplitErrors, float]:
        """Errors of every frame of `table` (this process scores its shard, every process gets
        all of them); returns them and the seconds spent (reading + model + copy back).

        With `objects` (a model of object samples): the errors of every object sample instead,
        one row per object in `objects`' order (`frame`, `label`, `scored`: its frame's; maps
        `[M, s, s]`, the mask cut like the crop). With `features`: each row's deep feature
        (`SplitErrors.features`; NaN where not scored, as its sample lacks a full history).
        Without `errors` (with `features`, without `maps`) the model runs only as far as the
        features, and `rgb`, `flow` are NaN. `progress`: show the progress bar (`desc`) on
        process 0."""
        batch_size = self.batch_size // jax.process_count()  # This process's part.
        dataset = pipeline.eval_dataset(
            table,
            history=self.history,
            batch_size=batch_size,
            channels=self.channels,
            read_threads=self.read_threads,
            objects=objects,
        )
        keys = pipeline.EVAL_KEYS if maps else tuple(k for k in pipeline.EVAL_KEYS if k != "mask")
        steps = pipeline.eval_steps(table, batch_size=batch_size, objects=objects)
        parts: list[dict[str, np.ndarray]] = []
        start = time.perf_counter()
        for local in tqdm(
            dataset,
            total=steps,
            desc=desc,
            unit="batch",
            disable=not progress or jax.process_index() != 0,
        ):
            batch = distributed.global_batch({k: local[k] for k in keys}, self.data_sharding)
            parts.append(self.step(params, batch, maps=maps, features=features, errors=errors))
            if len(parts) > 1:  # Copy the previous batch back while this one computes.
                parts[-2] = distributed.to_host(parts[-2])
        parts[-1] = distributed.to_host(parts[-1])
        seconds = time.perf_counter() - start
        # Step k of the global batch holds every process's k-th local batch in process order;
        # the split's order is process 0's whole block first: [steps, P, b] → [P, steps, b].
        processes = jax.process_count()
        out = {
            k: np.stack([p[k] for p in parts])
            .reshape(len(parts), processes, batch_size, *parts[0][k].shape[1:])
            .swapaxes(0, 1)
            .reshape(-1, *parts[0][k].shape[1:])
            for k in parts[0]
        }
        keep = out.pop("valid")
        out = {k: v[keep] for k, v in out.items()}
        scored = out["scored"].astype(bool)
        missing = np.full(len(scored), np.nan)  # No errors computed (`errors` False).
        split = scoring.SplitErrors(
            names=list(table.video_names or [str(v) for v in range(table.num_videos)]),
            video=out["video_index"].astype(np.int32),
            frame=out["frame_index"].astype(np.int32),
            scored=scored,
            rgb=np.where(scored, out["rgb"], 0.0).astype(np.float64) if errors else missing,
            flow=np.where(scored, out["flow"], 0.0).astype(np.float64) if errors else missing,
            label=out["label"].astype(np.int32) if labels else None,
            maps=(
                {"rgb": out["rgb_map"], "flow": out["flow_map"], "mask": out["mask"]}
                if maps
                else None
            ),
            features=(
                np.where(scored[:, None], out["features"], np.nan).astype(np.float32)
                if features
                else None
            ),
        )
        items = table.num_frames if objects is None else len(objects)
        if len(split.video) != items:
            raise AssertionError(f"scored {len(split.video)} of {items} samples")
        return split, seconds


def frames_only(
    table: pipeline.FrameTable, *, history: int, labels: bool, masks: bool
) -> scoring.SplitErrors:
    """The frames of `table` as `SplitErrors` without model errors (`rgb`, `flow` zero; `maps`
    only the `mask` `[N, S, S]`, when `masks`): what a model of object samples has of frames,
    which it does not score (its errors are its objects'; `split_errors(objects=...)`). A
    frame t is `scored` when t > T = `history`, as with a frame model."""
    ids = table.frame_ids
    frame = table.frame_index[ids].astype(np.int32)
    scored = frame > history
    keys = [k for k, on in (("label", labels), ("mask", masks)) if on]
    read = table.read(ids, keys) if keys else {}
    return scoring.SplitErrors(
        names=list(table.video_names or [str(v) for v in range(table.num_videos)]),
        video=table.video_index[ids].astype(np.int32),
        frame=frame,
        scored=scored,
        rgb=np.zeros(len(ids)),
        flow=np.zeros(len(ids)),
        label=read["label"].astype(np.int32) if labels else None,
        maps={"mask": read["mask"].astype(np.uint8)} if masks else None,
    )
