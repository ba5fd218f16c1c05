"""How good an explanation heatmap is: localisation, faithfulness, robustness and sanity metrics.

Maps are `[B, S, S]` float arrays, one per explained anomaly, higher = more important. Each
function's docstring gives its formula and which direction is better:

- `pointing`: does the map's peak fall in (or near) the ground-truth mask (Zhang et al., 2016)?
- `deletion_insertion`: does removing (inserting) the map's top pixels first drop (restore) the
  score fastest (Petsiuk et al., 2018, RISE)? Pixels are ranked by `importance_order`.
- `max_sensitivity`: how much does the map move under a small input perturbation (Yeh et al.,
  2019; Quantus' normalised Max-Sensitivity)?
- `randomisation_test`: does the map change when the model's weights are randomised from the
  top down (Adebayo et al., 2018)? Correlations by `spearman`.
- `modality_check`: does resetting the named modality's error drop the score more than
  resetting the other one?
- `bootstrap_interval`: the mean of a per-sample metric with its percentile-bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Inputs = Mapping[str, jax.Array]
ScoreFn = Callable[[Inputs], jax.Array]
MapFn = Callable[[Inputs], jax.Array | Mapping[str, jax.Array]]
Path = tuple[Hashable, ...]

ZERO_STD = 0.02  # Spread of a randomised leaf whose values are all equal (e.g. zero biases).


def peaks(maps: jax.Array, within: jax.Array | None = None) -> jax.Array:
    """Each map's peak pixel: its maximum (over the pixels `within`, when given); where several
    pixels share it (a plateau, e.g. an object's score flat over its box), the one nearest
    their centroid (the first in row-major order among equally near ones), so a plateau's peak
    is its centre, not its first corner.

    Args:
      maps: `[B, S, S]` float heatmaps.
      within: `[B, S, S]` bool, each row non-empty, or None (every pixel).

    Returns:
      `[B, 2]` int32 (row, column).
    """
    B, S, W = maps.shape
    maps = jnp.asarray(maps, jnp.float32)
    if within is not None:
        maps = jnp.where(jnp.asarray(within, bool), maps, -jnp.inf)
    top = maps == maps.max(axis=(1, 2), keepdims=True)
    rows, cols = jnp.meshgrid(jnp.arange(S), jnp.arange(W), indexing="ij")
    count = top.sum(axis=(1, 2))
    centre_row = (top * rows).sum(axis=(1, 2)) / count
    centre_col = (top * cols).sum(axis=(1, 2)) / count
    distance = (rows - centre_row[:, None, None]) ** 2 + (cols - centre_col[:, None, None]) ** 2
    flat = jnp.argmin(jnp.where(top, distance, jnp.inf).reshape(B, S * W), axis=1)
    return jnp.stack(jnp.divmod(flat, W), axis=1).astype(jnp.int32)


def pointing(
    maps: jax.Array, masks: jax.Array, tolerance: float, within: jax.Array | None = None
) -> dict[str, jax.Array]:
    """The pointing game: is each map's peak in its ground-truth mask?

    With p the peak pixel (`peaks`, over `within` when given) and M the mask's pixels:

        distance = min_{q ∈ M} ‖p − q‖₂    (pixels; 0 when p ∈ M, +inf when M is empty)

    strict: p ∈ M; near: distance ≤ `tolerance` (the explanation's usual 15 px at 224 px).

    Args:
      maps: `[B, S, S]` float heatmaps.
      masks: `[B, S, S]` bool ground truth.
      tolerance: the largest distance, in pixels, that still counts as `near`.
      within: `[B, S, S]` bool or None: where the peak is looked for (`peaks`).

    Returns:
      {"strict": p ∈ M, "distance": float32, "near": distance ≤ tolerance, "valid": M non-empty},
      each `[B]`. Higher strict/near rates (over valid samples) are better.
    """
    B, S, W = maps.shape
    masks = jnp.asarray(masks, dtype=bool)
    peak = peaks(maps, within)
    row, col = peak[:, 0], peak[:, 1]
    rows, cols = jnp.meshgrid(jnp.arange(S), jnp.arange(W), indexing="ij")
    to_peak = jnp.hypot(rows - row[:, None, None], cols - col[:, None, None]).astype(jnp.float32)
    distance = jnp.where(masks, to_peak, jnp.inf).min(axis=(1, 2))
    return {
        "strict": masks[jnp.arange(B), row, col],
        "distance": distance,
        "near": distance <= tolerance,
        "valid": masks.any(axis=(1, 2)),
    }


def importance_order(maps: jax.Array, key: jax.Array) -> jax.Array:
    """Pixel indices from the most to the least important, per sample.

    Pixels are sorted by decreasing map value; pixels of equal value come in the order of a
    uniformly random permutation drawn from `key` (one per sample), so a constant map (e.g. a
    flat min–max normalised map, all 0) ranks its pixels in a random order, not top-left first.

    Args:
      maps: `[B, S, S]` float heatmaps.
      key: a PRNG key.

    Returns:
      `[B, S*S]` int32 row-major pixel indices (i·S + j).
    """
    B = maps.shape[0]
    flat = maps.reshape(B, -1)
    keys = jax.random.split(key, B)
    shuffle = jax.vmap(lambda k: jax.random.permutation(k, flat.shape[1]))(keys)
    order = jnp.argsort(-jnp.take_along_axis(flat, shuffle, axis=1), axis=1, stable=True)
    return jnp.take_along_axis(shuffle, order, axis=1).astype(jnp.int32)


@jax.jit
def _swap_top(
    base: dict[str, jax.Array], top: dict[str, jax.Array], rank: jax.Array, count: jax.Array
) -> dict[str, jax.Array]:
    """`base` `[B, S, S, C]` per entry, with the pixels of rank < `count` (`rank` `[B, S*S]`)
    taken from `top`."""
    B, S = rank.shape[0], next(iter(base.values())).shape[1]
    chosen = (rank < count).reshape(B, S, S, 1)
    return {name: jnp.where(chosen, top[name], x) for name, x in base.items()}


def deletion_insertion(
    score_fn: ScoreFn,
    inputs: Inputs,
    reference: Inputs,
    maps: jax.Array,
    *,
    steps: int,
    key: jax.Array,
) -> dict[str, jax.Array]:
    """Deletion and insertion curves of the score and their areas (RISE, Petsiuk et al., 2018).

    With the N = S² pixels ranked by `importance_order(maps, key)` and k_i = ⌈(i/steps)·N⌉ for
    i = 0..steps, the top k_i pixels are replaced at the same positions in every entry:

        deletion:  s(d_i), d_i = the inputs with their top k_i pixels taken from the reference
        insertion: s(n_i), n_i = the reference with its top k_i pixels taken from the inputs

    and each curve is normalised per sample by its end points, s_orig = s(inputs) = s(d_0) and
    s_ref = s(reference) = s(d_steps):

        c_i = clip((s_i − s_ref) / (s_orig − s_ref), 0, 1)     (NaN where s_orig = s_ref)

    so deletion runs from 1 to 0 and insertion from 0 to 1. The clip bounds a step that takes
    the score past an end (a replaced pixel can raise a model's error): it counts as that end,
    so an anomaly whose two ends are close cannot outweigh the others in a mean. The areas are
    the trapezoid rule over the fraction f_i = i/steps ∈ [0, 1]. `score_fn` is called
    2·steps times, each on one batch of B samples (jit it yourself; insertion's two ends are
    deletion's, the same inputs); no more than two batches exist at once.

    Args:
      score_fn: a dict like `inputs` → scores `[B]`, sample b's score depending on sample b's
        inputs only.
      inputs: name → `[B, S, S, C_name]` (e.g. the frame `[B, S, S, 3]` and its flow
        `[B, S, S, 2]`).
      reference: the same names and shapes: the values a deleted pixel takes (e.g. zeros or a
        blurred copy).
      maps: `[B, S, S]` float heatmaps.
      steps: the number of steps (a Python int).
      key: a PRNG key for the tie-break of `importance_order`.

    Returns:
      {"deletion_auc": `[B]` (lower is better), "insertion_auc": `[B]` (higher is better),
      "deletion", "insertion": the normalised curves `[B, steps + 1]`, "fractions":
      `[steps + 1]`, "original": s_orig `[B]`}.
    """
    inputs, reference = dict(inputs), dict(reference)
    N = maps.shape[1] * maps.shape[2]
    rank = jnp.argsort(importance_order(maps, key), axis=1)
    counts = [-(-i * N // steps) for i in range(steps + 1)]
    deletion = jnp.stack([score_fn(_swap_top(inputs, reference, rank, k)) for k in counts], 1)
    inserted = [score_fn(_swap_top(reference, inputs, rank, k)) for k in counts[1:-1]]
    insertion = jnp.stack([deletion[:, -1], *inserted, deletion[:, 0]], 1)
    s_orig, s_ref = deletion[:, :1], deletion[:, -1:]
    span = jnp.where(s_orig == s_ref, jnp.nan, s_orig - s_ref)
    fractions = jnp.arange(steps + 1, dtype=jnp.float32) / steps
    curves = {
        kind: jnp.clip((values - s_ref) / span, 0.0, 1.0)
        for kind, values in (("deletion", deletion), ("insertion", insertion))
    }
    return {
        **curves,
        "deletion_auc": jnp.trapezoid(curves["deletion"], fractions, axis=1),
        "insertion_auc": jnp.trapezoid(curves["insertion"], fractions, axis=1),
        "fractions": fractions,
        "original": deletion[:, 0],
    }


def _as_float(x: jax.Array) -> jax.Array:
    """`x` unchanged if floating, else cast to float32 (uint8 frames keep their 0–255 scale)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def max_sensitivity(
    map_fn: MapFn, inputs: Inputs, *, radius: float, samples: int, key: jax.Array
) -> jax.Array:
    """Normalised Max-Sensitivity (Yeh et al., 2019; as Quantus' `MaxSensitivity` with
    `normalise=True`): how far the map moves under a small perturbation of its input.

        MS(x) = max_{j < samples} ‖Φ(x + ε_j) − Φ(x)‖₂ / ‖Φ(x)‖₂,   ε_j ~ U[−radius, radius]

    elementwise and independently for every entry of `inputs` and every draw, norms over a
    sample's S × S map. A sample whose map is 0 everywhere (‖Φ(x)‖₂ = 0) gets
    max_j ‖Φ(x + ε_j) − Φ(x)‖₂, undivided. Entries that are not floating (e.g. uint8 frames) are
    cast to float32 first, so `radius` is in the entry's own units (0–255 for uint8), and
    `map_fn` sees float inputs both unperturbed and perturbed. `map_fn` is called
    `samples + 1` times (jit it yourself). Lower is better; a map that ignores its input
    scores exactly 0.

    Args:
      map_fn: a dict like `inputs` → heatmaps Φ `[B, S, S]`, sample b's map depending on
        sample b's inputs only; or → a Mapping name → `[B, S, S]` of several maps, each
        measured on its own under the same draws (one call per draw for all of them).
      inputs: name → `[B, ...]` arrays.
      radius: the half-width of the uniform noise.
      samples: the number of noise draws (a Python int).
      key: a PRNG key.

    Returns:
      `[B]` float (a Mapping name → `[B]` for a Mapping of maps).
    """
    x = {name: _as_float(value) for name, value in inputs.items()}
    original = map_fn(x)

    def flat_norm(maps: jax.Array) -> jax.Array:
        return jnp.linalg.norm(maps.reshape(maps.shape[0], -1), axis=1)

    norm = jax.tree.map(flat_norm, original)
    worst = jax.tree.map(jnp.zeros_like, norm)
    for j in range(samples):
        keys = jax.random.split(jax.random.fold_in(key, j), len(x))
        noisy = {
            name: value + jax.random.uniform(k, value.shape, value.dtype, -radius, radius)
            for k, (name, value) in zip(keys, x.items(), strict=True)
        }
        moved = jax.tree.map(lambda a, b: flat_norm(a - b), map_fn(noisy), original)
        worst = jax.tree.map(jnp.maximum, worst, moved)
    return jax.tree.map(lambda w, n: jnp.where(n > 0, w / jnp.where(n > 0, n, 1.0), w), worst, norm)


def _average_ranks(x: jax.Array) -> jax.Array:
    """1-based ranks of `x` `[N]`, tied values sharing their average rank (scipy's
    `rankdata(method="average")`), `[N]` float32."""
    ordered = jnp.sort(x)
    below = jnp.searchsorted(ordered, x, side="left")
    up_to = jnp.searchsorted(ordered, x, side="right")
    return (below + up_to + 1).astype(jnp.float32) / 2


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman's rank correlation of each row of `a` with the same row of `b`.

    The Pearson correlation of the average ranks (ties share their mean rank, as
    `scipy.stats.spearmanr`). Where a row has one value only, the correlation is undefined
    (scipy gives NaN); here a row constant in both `a` and `b` is "unchanged" and gives 1, and
    a row constant in only one of them gives 0.

    Args:
      a, b: `[B, N]`.

    Returns:
      `[B]` float32 in [−1, 1].
    """
    ranks_a = jax.vmap(_average_ranks)(a)
    ranks_b = jax.vmap(_average_ranks)(b)
    da = ranks_a - ranks_a.mean(axis=1, keepdims=True)
    db = ranks_b - ranks_b.mean(axis=1, keepdims=True)
    scale = jnp.sqrt((da**2).sum(axis=1) * (db**2).sum(axis=1))
    flat_a, flat_b = (jnp.all(x == x[:, :1], axis=1) for x in (a, b))
    undefined = jnp.where(flat_a & flat_b, 1.0, 0.0)
    return jnp.where(scale > 0, (da * db).sum(axis=1) / jnp.where(scale > 0, scale, 1.0), undefined)


def _entry_name(entry: Any) -> Hashable:
    """A `jax.tree_util` key-path entry as a plain dict key, attribute name or index."""
    match entry:
        case jax.tree_util.DictKey(key=name) | jax.tree_util.FlattenedIndexKey(key=name):
            return name
        case jax.tree_util.GetAttrKey(name=name):
            return name
        case jax.tree_util.SequenceKey(idx=name):
            return name
    raise TypeError(f"unknown pytree key entry {entry!r}")


def top_down_groups(params: Mapping[Hashable, Any]) -> list[Path]:
    """The top-level groups of `params`, output side first: `[(key,), ...]`, the keys in
    reverse iteration order.

    For a plain dict that is the reverse of its insertion order (build it input side first).
    `flax.nnx.State` iterates its keys sorted by name, not in the order the module defines its
    layers: write the prefixes yourself when the names do not sort input side first.
    """
    return [(name,) for name in reversed(list(params))]


def _randomised(leaf: Any, key: jax.Array) -> Any:
    """A floating `leaf` redrawn from the normal of its own mean and standard deviation
    (`ZERO_STD` where that is 0), drawn on the host (on the device one draw per leaf would
    compile once per shape) and placed as the leaf was; other dtypes (e.g. counters, PRNG keys)
    unchanged. The leaf must be readable on the host (one process, or fully replicated)."""
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        return leaf
    values = np.asarray(leaf)
    std = values.std(dtype=np.float64)
    std = std if std > 0 else ZERO_STD
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    draw = np.random.default_rng(seed).standard_normal(values.shape)
    redrawn = (values.mean(dtype=np.float64) + std * draw).astype(values.dtype)
    # Placed as the leaf was: the jitted map compiles once for the whole cascade.
    return jax.device_put(redrawn, leaf.sharding) if isinstance(leaf, jax.Array) else redrawn


def _cascade(params: Any, layers: Sequence[Path], key: jax.Array) -> Iterator[Any]:
    """`params` after each step g of the cascade: every leaf under `layers[0..g]` randomised
    (`_randomised`, one draw per leaf, kept by later steps)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [tuple(_entry_name(entry) for entry in path) for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    done = [False] * len(leaves)
    for prefix in layers:
        hits = [i for i, name in enumerate(names) if name[: len(prefix)] == tuple(prefix)]
        if not hits:
            raise ValueError(f"no parameter under {tuple(prefix)}; the paths are {names}")
        for i in hits:
            if not done[i]:
                leaves[i], done[i] = _randomised(leaves[i], jax.random.fold_in(key, i)), True
        yield jax.tree_util.tree_unflatten(treedef, leaves)


def randomisation_test(
    map_fn: Callable[[Any], jax.Array],
    params: Any,
    layers: Sequence[Path],
    *,
    key: jax.Array,
    threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """Cascading model-parameter randomisation (Adebayo et al., 2018): an explanation that
    still looks the same once the weights are random does not explain the model.

    Step g (g = 0..G−1) randomises every leaf whose path starts with one of `layers[0..g]`,
    cumulatively from the output side down: each floating leaf is replaced by draws of the
    normal of its own mean and standard deviation (std 0.02 where all its values are equal,
    e.g. zero biases); non-floating leaves are kept. With M the original maps and M_g the maps
    after step g, flattened per sample:

        correlation[g, b] = spearman(M[b], M_g[b])
        passes[b] = correlation[G−1, b] ≤ threshold

    Args:
      map_fn: parameters (the structure of `params`) → heatmaps `[B, S, S]` of fixed inputs.
      params: any pytree of arrays: a nested dict, or a `flax.nnx.State` (`nnx.split`; the
        map merges it with the graph).
      layers: G path prefixes, output side first: tuples of dict keys, attribute names or
        sequence indices, as `jax.tree_util` key paths spell them (an nnx variable's value
        is `(..., "kernel", "value")`, so `("head",)` names the `head` submodule).
        `top_down_groups(params)` gives the top-level groups. A prefix naming no leaf is a
        `ValueError`.
      key: a PRNG key.
      threshold: the largest final correlation that passes.

    Returns:
      {"correlation": `[G, B]` float32 (lower after randomisation is better),
      "passes": `[B]` bool}.
    """
    original = map_fn(params)
    B = original.shape[0]
    correlation = jnp.stack(
        [
            spearman(original.reshape(B, -1), map_fn(randomised).reshape(B, -1))
            for randomised in _cascade(params, layers, key)
        ]
    )
    return {"correlation": correlation, "passes": correlation[-1] <= threshold}


def bootstrap_interval(
    values: Any, *, samples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The mean of the finite `values` and its percentile-bootstrap interval.

    The n finite values (NaN and ±inf dropped) are resampled with replacement `samples` times;
    the interval is the (1 − confidence)/2 and (1 + confidence)/2 quantiles of the resampled
    means. No finite value → (nan, nan, nan).

    Args:
      values: any array-like of numbers (e.g. `[B]` AUCs or pointing hits).

    Returns:
      (mean, low, high).
    """
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return (np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = [rng.choice(finite, finite.size).mean() for _ in range(samples)]
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return (float(finite.mean()), float(low), float(high))


def modality_check(
    z_rgb: jax.Array, z_flow: jax.Array, alpha: float, named: Sequence[str] | jax.Array
) -> jax.Array:
    """Is the named modality faithful: does resetting its error drop the score more?

    A frame's score is S = z_rgb + α·z_flow (z: training-normalised errors,
    `jaxvad.explain.attribution`). Resetting a modality's error to its training mean sets its z
    to 0, so the drops are drop_rgb = z_rgb and drop_flow = α·z_flow. The check passes when
    drop_named > drop_other (a tie fails).

    Args:
      z_rgb, z_flow: `[B]`.
      alpha: the flow weight α of the score.
      named: `[B]` the attributed modality: "appearance" (rgb) or "motion" (flow) strings, or
        bools (True = "motion").

    Returns:
      `[B]` bool.
    """
    named = np.asarray(named)
    if named.dtype != bool:
        unknown = set(named.tolist()) - {"appearance", "motion"}
        if unknown:
            raise ValueError(f"modalities are 'appearance' or 'motion', not {sorted(unknown)}")
        named = named == "motion"
    motion = jnp.asarray(named)
    drop_rgb, drop_flow = jnp.asarray(z_rgb), alpha * jnp.asarray(z_flow)
    return jnp.where(motion, drop_flow, drop_rgb) > jnp.where(motion, drop_rgb, drop_flow)
