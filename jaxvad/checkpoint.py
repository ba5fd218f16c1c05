"""Checkpoints of a run: train state + grain iterator state + config, through Orbax.

`WORKDIR/checkpoints/<step>/` holds three items: `state` (the train state pytree: step, model
parameters, optimizer state), `data_iter` (the grain iterator position of every process, so a
resumed run sees exactly the batches it would have seen) and `config` (the run's config as
JSON). Orbax writes them collectively from every process and commits a step atomically: a run
killed mid-save leaves the previous step as the latest.

A fourth item, `normal_errors`, is added to a step once its model has scored the training
split (the per-frame errors that scores are normalised and thresholded with; see
`jaxvad.scoring`): by the trainer after its last step, or by the first `jaxvad.detector.load`
of a step that lacks it. It is written atomically (a temporary folder renamed) into the step's
folder. With it, a workdir alone is a detector: scoring video needs no prepared dataset. In
object mode the memory banks of `jaxvad.object_scores` are added the same way, as files
`object_bank_<component>_k<k>.npz` in the step's folder (Orbax passes over files), and, for a
model of object samples, the training objects' errors as `object_errors.npz`, and the choice
of components made without test labels (`jaxvad.component_choice`) as
`component_choice_<settings>.json`.

A step may carry a selection metric (`SELECTION_METRIC`, Orbax's per-step metrics): a weakly
supervised run scores its held-out training videos at each checkpoint (`jaxvad.train`).
`selected_step` is then the best such step, kept through `keep` (Orbax's `BestN` beside
`LatestN`); without metrics it is the latest step.

`changed` is the one "X in the checkpoint, Y now" diff of a checkpoint's config against a
config, used wherever a run must match its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvad import atomic

NORMAL_ERRORS = "normal_errors"
OBJECT_BANK = "object_bank_"  # + a component and k: one .npz per object bank.
OBJECT_ERRORS = "object_errors"  # The training objects' errors (object samples).
BACKGROUND = "background"  # The training split's per-pixel median frame.
COMPONENT_CHOICE = "component_choice_"  # + its settings: one .json per choice of components.
# The held-out training videos' video-level ROC-AUC of a step (weakly supervised runs).
SELECTION_METRIC = "holdout_video_auc"


class CheckpointMismatchError(ValueError):
    """The checkpoint in a workdir does not fit the configured model or optimizer."""


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(x.shape) for path, x in leaves
    }


class Checkpoints:
    """The Orbax `CheckpointManager` of one workdir (`WORKDIR/checkpoints`)."""

    def __init__(self, workdir: str | Path, *, keep: int = 3, select: bool = False):
        """`keep`: the latest steps kept by saves; `select`: saves carry the selection metric,
        and the best step is kept too (module docstring)."""
        self.directory = Path(workdir).absolute() / "checkpoints"
        keeping: list[ocp.checkpoint_managers.PreservationPolicy] = [
            ocp.checkpoint_managers.LatestN(n=keep)
        ]
        if select:
            keeping.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=_selection, n=1, keep_checkpoints_without_metrics=False
                )
            )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True,
                best_fn=_selection if select else None,  # Orbax writes metrics only with it.
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(keeping),
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data_iter": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                NORMAL_ERRORS: ocp.StandardCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def selected_step(self) -> int | None:
        """The step with the best `SELECTION_METRIC` (ties: the later one), else the latest."""
        scored = self.selection()
        return max(scored, key=lambda s: (scored[s], s)) if scored else self.latest_step()

    def selection(self) -> dict[int, float]:
        """Step → `SELECTION_METRIC` of the kept steps that have it."""
        metrics = {s: self.manager.metrics(s) or {} for s in self.manager.all_steps()}
        return {s: m[SELECTION_METRIC] for s, m in metrics.items() if SELECTION_METRIC in m}

    def save(
        self,
        step: int,
        state: Any,
        data_iter: grain.DatasetIterator,
        config: Mapping[str, Any],
        selection: float | None = None,
    ) -> None:
        """Starts an asynchronous save (arrays are copied off the device before it returns),
        with the step's `selection` metric when given."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                config=ocp.args.JsonSave(dict(config)),
            ),
            metrics=None if selection is None else {SELECTION_METRIC: float(selection)},
        )

    def config(self, step: int) -> dict[str, Any]:
        """The config the run of `step` was saved with."""
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]

    def check_fits(
        self, step: int, abstract_state: Any, config: Mapping[str, Any], part: str | None = None
    ) -> None:
        """Raises CheckpointMismatchError naming the first array whose shape differs (model
        parameters or optimizer state) and the model, data and optimizer settings that changed.
        `part`: compare only this entry of the train state (e.g. "params")."""
        stored = self.manager.item_metadata(step)["state"].tree
        stored = _shapes(stored[part] if part else stored)
        wanted = _shapes(abstract_state)
        if stored == wanted:
            return
        differing = sorted(
            k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k)
        )
        first = differing[0]
        fields = [f"{s}.{key}" for s in ("model", "data", "optimizer") for key in config[s]]
        changes = changed(self.config(step), config, fields)
        raise CheckpointMismatchError(
            f"{self.directory / str(step)}: the checkpoint's train state does not fit the "
            f"config's model and optimizer ({len(differing)} arrays differ; first {first}: shape "
            f"{stored.get(first, 'absent')} in the checkpoint, {wanted.get(first, 'absent')} in "
            f"the config). Changed settings: {'; '.join(changes) or 'none found'}. Use a new "
            "--workdir, or the checkpoint's config."
        )

    def params(self, step: int, abstract_params: Any) -> Any:
        """Only the model parameters of `step`'s train state, laid out as `abstract_params`."""
        abstract = {"params": abstract_params}
        restored = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(
                abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            ),
        )
        return restored["params"]

    def has_normal_errors(self, step: int) -> bool:
        return (self.directory / str(step) / NORMAL_ERRORS).is_dir()

    def normal_errors(self, step: int) -> dict[str, np.ndarray] | None:
        """The training split's per-frame errors stored with `step`, or None."""
        if not self.has_normal_errors(step):
            return None
        args = ocp.args.Composite(**{NORMAL_ERRORS: ocp.args.StandardRestore()})
        return self.manager.restore(step, args=args)[NORMAL_ERRORS]

    def save_normal_errors(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Adds the `normal_errors` item to `step` (collective; atomic)."""
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(self.directory / str(step) / NORMAL_ERRORS, dict(arrays))

    def _arrays(self, step: int, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of the file `<name>.npz` of `step`'s folder, or None."""
        path = self.directory / str(step) / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    def _save_arrays(self, step: int, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Writes `<name>.npz` into `step`'s folder (process 0 writes; atomic)."""
        if jax.process_index() == 0:
            with atomic.file(self.directory / str(step) / f"{name}.npz", suffix=".npz") as tmp:
                np.savez(tmp, **arrays)

    def background(self, step: int) -> np.ndarray | None:
        """The training split's median frame `[S, S, C]` stored with `step`, or None."""
        arrays = self._arrays(step, BACKGROUND)
        return None if arrays is None else arrays["frame"]

    def save_background(self, step: int, frame: np.ndarray) -> None:
        """Stores the training split's median frame with `step` (process 0 writes; atomic)."""
        self._save_arrays(step, BACKGROUND, {"frame": frame})

    def object_bank(self, step: int, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of the object bank `name` stored with `step`, or None."""
        return self._arrays(step, OBJECT_BANK + name)

    def save_object_bank(self, step: int, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Stores an object bank with `step` (process 0 writes; atomic)."""
        self._save_arrays(step, OBJECT_BANK + name, arrays)

    def object_errors(self, step: int) -> dict[str, np.ndarray] | None:
        """The training objects' errors stored with `step` (object samples), or None."""
        return self._arrays(step, OBJECT_ERRORS)

    def save_object_errors(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Stores the training objects' errors with `step` (process 0 writes; atomic)."""
        self._save_arrays(step, OBJECT_ERRORS, arrays)

    def component_choice(self, step: int, name: str) -> dict[str, Any] | None:
        """The choice of components `name` stored with `step` (`jaxvad.component_choice`), or
        None."""
        path = self.directory / str(step) / f"{COMPONENT_CHOICE}{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_component_choice(self, step: int, name: str, record: Mapping[str, Any]) -> None:
        """Stores a choice of components with `step` (process 0 writes; atomic)."""
        if jax.process_index() == 0:
            path = self.directory / str(step) / f"{COMPONENT_CHOICE}{name}.json"
            atomic.write_text(path, json.dumps(record, indent=1) + "\n")

    def restore(self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator) -> Any:
        """The train state of `step`, laid out as `abstract_state` (shapes, dtypes and
        shardings); `data_iter` is moved to the saved position in place."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        return restored["state"]

    def close(self) -> None:
        """Waits for a pending save to commit."""
        self.manager.wait_until_finished()
        self.manager.close()


def _selection(metrics: Mapping[str, float]) -> float:
    return metrics[SELECTION_METRIC]


def _plain(value: Any) -> Any:
    """JSON turns tuples into lists: compare settings in that form."""
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _field(config: Mapping[str, Any], name: str) -> Any:
    """The value of the dotted field `name` ("a.b") in nested mappings, None where absent."""
    for key in name.split("."):
        if not isinstance(config, Mapping) or key not in config:
            return None
        config = config[key]
    return config


def changed(
    stored: Mapping[str, Any], current: Mapping[str, Any], fields: Iterable[str]
) -> list[str]:
    """The `fields` (dotted names) whose value in the config `current` differs from the one
    in `stored` (a checkpoint's config), as "data.size: 32 in the checkpoint, 48 now"."""
    return [
        f"{name}: {_field(stored, name)!r} in the checkpoint, {_field(current, name)!r} now"
        for name in fields
        if _plain(_field(stored, name)) != _plain(_field(current, name))
    ]
