"""The component choice's validation under each way of combining components, with the test
AUCs beside (they do not decide): what the README's grids of the choice are measured with.

    python -m jaxvad.bench.choice --config=configs/ped2_cpu_objects.py \
        --workdir=runs/ped2_cpu_objects [--top=8] [--draws=200] [--config.a.b=v ...]

The run is loaded with every single component the choice can use (their banks are fitted and
stored with the checkpoint on first use, as `jaxvad.evaluate` stores them). The pseudo-anomalies
are drawn and scored as `("auto",)` draws and scores them (`detector.loaded_choice_inputs`,
`component_choice.pseudo_scores`), and each rule of `component_choice.COMBINE` ranks every
candidate (`component_choice.rank`). "sum" is the detector's object score, so its first row is
the run's choice.

Printed per rule: its best `--top` candidates with their mean and per-kind pseudo-anomaly AUC,
and beside them each candidate's micro AUC on the labelled test split (the components scored
once, `Detector.score_objects`; frames t > T; a frame the maximum of its objects, the least
training object score without one: the default protocol, whose training normalisation does
not change a ranking). Then the difference of each rule's best mean from "sum"'s, with a
percentile-bootstrap 95 % interval over `--draws` resamplings of the normal frames and of each
kind's pseudo objects (frames resampled one by one, not by video: the interval is a lower
bound on the noise).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import ml_collections
import numpy as np
from absl import flags

from jaxvad import cli, component_choice, detector, metrics, object_scores
from jaxvad import config as config_lib
from jaxvad import evaluate as evaluate_lib

Row = tuple[tuple[str, ...], dict[str, float], float]


def mean_auc(normal: np.ndarray, pseudo: dict[str, np.ndarray]) -> float:
    """The mean over kinds of the ROC-AUC of `pseudo[kind]` against the `normal` frames
    (`component_choice.kind_aucs`)."""
    return float(np.mean(list(component_choice.kind_aucs(normal, pseudo).values())))


def difference_interval(
    first: tuple[np.ndarray, dict[str, np.ndarray]],
    second: tuple[np.ndarray, dict[str, np.ndarray]],
    draws: int,
    seed: int,
) -> tuple[float, float, float]:
    """`mean_auc(second) − mean_auc(first)` (each: normal frames `[N]`, pseudo frames per
    kind `[P]`, row-aligned between the two) and its percentile-bootstrap 95 % interval over
    `draws` paired resamplings of the frames and of the pseudo objects."""
    rng = np.random.default_rng(seed)
    point = mean_auc(*second) - mean_auc(*first)
    n, p = len(first[0]), len(next(iter(first[1].values())))
    diffs = []
    for _ in range(draws):
        i, j = rng.integers(0, n, n), rng.integers(0, p, p)
        a = mean_auc(first[0][i], {k: v[j] for k, v in first[1].items()})
        b = mean_auc(second[0][i], {k: v[j] for k, v in second[1].items()})
        diffs.append(b - a)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return point, float(low), float(high)


def labelled_aucs(
    found: detector.Detector, names: list[str]
) -> dict[tuple[str, ...], float] | None:
    """Per candidate (sets of 1 to `MOST` of `names`) and rule, the test split's micro AUC,
    keyed `(rule, *components)`; None for a test split without labels of both classes."""
    config = found.config
    split = evaluate_lib.open_test_split(config_lib.dataset_dir(config, needed_for="its test"))
    if not split.labeled:
        return None
    errors, _ = found.errors(split.table, labels=True, maps=False, desc="test")
    scored = found.score_objects(object_scores.read_objects(split.table), split.table)
    labels = errors.label[errors.scored]
    if labels.min() == labels.max():
        return None
    model = found.objects
    train = {name: bank.train_scores for name, bank in model.banks.items()}
    if model.error is not None:
        train[object_scores.ERROR] = model.error.train_scores
    objects = scored.objects
    result = {}
    for rule, together in component_choice.COMBINE.items():
        for combo in component_choice.candidates(names):
            floor = object_scores.least_score(together([train[c] for c in combo]))
            total = together([scored.components[c] for c in combo])
            frames = object_scores.frame_maximum(
                total, objects.frame_position, objects.num_frames, floor
            )
            result[(rule, *combo)] = metrics.roc_auc_micro(frames[errors.scored], labels)
    return result


@dataclasses.dataclass(frozen=True)
class Measured:
    """`measure`'s result: per rule of `component_choice.COMBINE` its ranked `tables` (rows
    of `Choice.table`); `tests`: per `(rule, *components)` the test split's micro AUC (None
    without labels of both classes); `differences`: per rule other than "sum" its best mean
    less "sum"'s, with the bootstrap interval, (point, low, high); `step`, `k`, `calibration`,
    `pseudo_objects`, `normal_frames`: what was measured."""

    tables: dict[str, list[Row]]
    tests: dict[tuple[str, ...], float] | None
    differences: dict[str, tuple[float, float, float]]
    step: int
    k: int
    calibration: str
    pseudo_objects: int
    normal_frames: int


def measure(config: ml_collections.ConfigDict, workdir: str | Path, draws: int) -> Measured:
    """Every candidate of the choice under each rule, on the run in `workdir` (the module
    docstring)."""
    names = component_choice.singles(config.objects.samples)
    overrides = config_lib.flatten(config) | {"score.components": tuple(names)}
    found = detector.load(workdir, overrides)
    o, seed = found.config.objects, found.config.seed
    inputs = detector.loaded_choice_inputs(found)
    kinds = tuple(o.pseudo_kinds)
    normal, scored = component_choice.pseudo_scores(
        inputs.train,
        inputs.picked,
        frame_sizes=inputs.frame_sizes,
        k=o.k,
        nearby=o.nearby,
        seed=seed,
        attribution=inputs.attribution,
        pseudo_errors=inputs.pseudo_errors,
        kinds=kinds,
        rule=found.config.score.calibration,
    )
    tables = {
        rule: component_choice.rank(
            normal, scored, inputs.train, inputs.picked, inputs.scored_frames, combine=rule
        )
        for rule in component_choice.COMBINE
    }

    def frames_of(rule: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        combo = tables[rule][0][0]
        frames, values = component_choice.candidate_frames(
            [normal[c] for c in combo],
            {kind: [scored[c][kind] for c in combo] for kind in kinds},
            inputs.train,
            inputs.picked,
            rule,
        )
        return frames[inputs.scored_frames], values

    differences = {
        rule: difference_interval(frames_of("sum"), frames_of(rule), draws, seed)
        for rule in component_choice.COMBINE
        if rule != "sum"
    }
    return Measured(
        tables,
        labelled_aucs(found, names),
        differences,
        found.step,
        o.k,
        found.config.score.calibration,
        len(inputs.picked),
        int(inputs.scored_frames.sum()),
    )


def benchmark(config: ml_collections.ConfigDict, workdir: str, top: int, draws: int) -> None:
    m = measure(config, workdir, draws)
    print(
        f"{workdir}: step {m.step}, k = {m.k}, calibration {m.calibration}, "
        f"{m.pseudo_objects} pseudo objects per kind, {m.normal_frames} normal frames; test "
        "micro AUC computed beside, not deciding"
        + ("" if m.tests is not None else " (the test split has no labels of both classes)")
    )
    kinds = list(m.tables["sum"][0][1])
    for rule, table in m.tables.items():
        print(f"\nrule {rule!r}: the best {top} of {len(table)} candidates")
        print(f"  {'components':32} {'mean':>7} " + " ".join(f"{k:>8}" for k in kinds) + "   test")
        for combo, auc, mean in itertools.islice(table, top):
            test = "" if m.tests is None else f"{m.tests[(rule, *combo)]:.4f}"
            print(
                f"  {', '.join(combo):32} {mean:7.4f} "
                + " ".join(f"{auc[k]:8.3f}" for k in kinds)
                + f"   {test}"
            )
    print()
    for rule, (point, low, high) in m.differences.items():
        print(
            f"best mean, {rule!r} − 'sum': {point:+.4f} [{low:+.4f}, {high:+.4f}] "
            f"(95 % bootstrap, {draws} draws)"
        )


def main() -> None:
    config = cli.define_config_flag()
    workdir = flags.DEFINE_string("workdir", None, "a trained object-mode run", required=True)
    top = flags.DEFINE_integer("top", 8, "candidates printed per rule")
    draws = flags.DEFINE_integer("draws", 200, "bootstrap resamplings of the difference")
    cli.run(
        lambda: benchmark(config.value, workdir.value, top.value, draws.value),
        config=config,
        usage="python -m jaxvad.bench.choice --config=FILE --workdir=DIR [--top=N] [--draws=N]",
        user_errors=evaluate_lib.USER_ERRORS,
    )


if __name__ == "__main__":
    main()
