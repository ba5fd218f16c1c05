"""k-nearest-neighbour distances on the accelerator: the density score of object attributes.

An object's attribute vector (its velocity histogram, its size, its place, ...) is unusual when
it lies far from the training objects' vectors: its score is the mean distance to its k nearest
training vectors (the memory bank). `knn_distances` computes them in JAX in fixed-size blocks,
so memory stays bounded whatever the bank's size:

- queries are processed `query_block` at a time (`lax.map`);
- for each block, the bank is scanned `bank_block` rows at a time (`lax.scan`), keeping the
  running k smallest squared distances (`lax.top_k` over the current k and the new block);
- squared distances come from ‖q‖² − 2 q·b + ‖b‖² (one matrix product per block pair), on
  vectors centred at the bank's mean (distances do not change; the expansion's cancellation
  shrinks with the norms); the k winners' distances are then recomputed from their differences.

Leave-one-group-out: with `query_groups` and `bank_groups` (e.g. video indices), a query ignores
the bank rows of its own group, so training objects are scored without themselves (or their
video's near-copies in the neighbouring frames) — the calibration statistics of a training
object then look like those of a test object.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_FAR = jnp.inf


def _pad_rows(x: np.ndarray, multiple: int, value: float) -> np.ndarray:
    rows = -len(x) % multiple
    return np.concatenate([x, np.full((rows, *x.shape[1:]), value, x.dtype)]) if rows else x


@functools.partial(jax.jit, static_argnames=("k", "bank_block"))
def _search(
    queries: jax.Array,
    query_groups: jax.Array,
    bank: jax.Array,
    bank_groups: jax.Array,
    bank_valid: jax.Array,
    *,
    k: int,
    bank_block: int,
) -> tuple[jax.Array, jax.Array]:
    """Query blocks `[B, Qb, D]` (groups `[B, Qb]`), one at a time; bank `[M, D]` (M a multiple
    of bank_block), bank_groups `[M]`, bank_valid `[M]` bool → (squared distances `[B, Qb, k]`
    ascending, indices `[B, Qb, k]`) among the valid bank rows of other groups."""
    blocks = bank.shape[0] // bank_block
    bank_norms = jnp.sum(bank * bank, axis=1)

    def query_block(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        queries, query_groups = args
        q_norms = jnp.sum(queries * queries, axis=1)

        def scan_block(carry, i):
            best, best_index = carry  # [Qb, k] negated squared distances, int32 indices
            start = i * bank_block
            rows = jax.lax.dynamic_slice_in_dim(bank, start, bank_block)
            norms = jax.lax.dynamic_slice_in_dim(bank_norms, start, bank_block)
            groups = jax.lax.dynamic_slice_in_dim(bank_groups, start, bank_block)
            valid = jax.lax.dynamic_slice_in_dim(bank_valid, start, bank_block)
            d2 = q_norms[:, None] - 2.0 * queries @ rows.T + norms[None, :]
            allowed = valid[None, :] & (groups[None, :] != query_groups[:, None])
            d2 = jnp.where(allowed, jnp.maximum(d2, 0.0), _FAR)
            index = start + jnp.arange(bank_block, dtype=jnp.int32)
            merged = jnp.concatenate([best, -d2], axis=1)
            merged_index = jnp.concatenate([best_index, jnp.broadcast_to(index, d2.shape)], 1)
            best, where = jax.lax.top_k(merged, k)
            return (best, jnp.take_along_axis(merged_index, where, axis=1)), None

        start = (
            jnp.full((queries.shape[0], k), -_FAR, queries.dtype),
            jnp.zeros((queries.shape[0], k), jnp.int32),
        )
        (best, best_index), _ = jax.lax.scan(scan_block, start, jnp.arange(blocks))
        # Exact squared distances of the winners (rows beyond reach stay at +inf).
        diff = queries[:, None, :] - bank[best_index]
        exact = jnp.where(jnp.isfinite(best), jnp.sum(diff * diff, axis=-1), _FAR)
        order = jnp.argsort(exact, axis=1)
        return jnp.take_along_axis(exact, order, 1), jnp.take_along_axis(best_index, order, 1)

    return jax.lax.map(query_block, (queries, query_groups))


def knn_distances(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    query_groups: np.ndarray | None = None,
    bank_groups: np.ndarray | None = None,
    query_block: int = 1024,
    bank_block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances `[Q, k]` (ascending) from each query `[Q, D]` to its k nearest rows of
    `bank` `[M, D]`, and their bank indices `[Q, k]` int32.

    With groups (`[Q]` and `[M]` ints, both or neither), a query's neighbours come only from
    other groups. A query with fewer than k allowed rows gets +inf (index arbitrary) for the
    missing ones. Computed in float32 on the default device.
    """
    if (query_groups is None) != (bank_groups is None):
        raise ValueError("give both query_groups and bank_groups, or neither")
    queries = np.asarray(queries, np.float64)
    bank = np.asarray(bank, np.float64)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"need queries [Q, D] and bank [M, D], got {queries.shape}, {bank.shape}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}] (the bank's rows), got {k}")
    centre = bank.mean(axis=0)
    queries = (queries - centre).astype(np.float32)
    bank = (bank - centre).astype(np.float32)
    n = len(queries)
    if query_groups is None:
        query_groups, bank_groups = np.zeros(n, np.int32), np.ones(len(bank), np.int32)
    query_groups = np.asarray(query_groups, np.int32)
    bank_groups = np.asarray(bank_groups, np.int32)
    bank_block = min(bank_block, len(bank))
    valid = _pad_rows(np.ones(len(bank), bool), bank_block, False)
    bank = _pad_rows(bank, bank_block, 0.0)
    bank_groups = _pad_rows(bank_groups, bank_block, 0)
    query_block = max(1, min(query_block, n))
    padded = _pad_rows(queries, query_block, 0.0).reshape(-1, query_block, queries.shape[1])
    groups = _pad_rows(query_groups, query_block, 0).reshape(-1, query_block)
    squared, index = _search(padded, groups, bank, bank_groups, valid, k=k, bank_block=bank_block)
    squared = np.asarray(squared).reshape(-1, k)[:n]
    return np.sqrt(squared), np.asarray(index).reshape(-1, k)[:n]
