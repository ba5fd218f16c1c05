"""Tests of the blocked JAX k-nearest-neighbour search (`jaxvad.knn`) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from jaxvad.knn import knn_distances


def points(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # Offset and scaled, so the ‖q‖² − 2q·b + ‖b‖² expansion would lose digits on its own.
    return (rng.normal(size=(n, d)) * 3 + 50).astype(np.float32)


@pytest.mark.parametrize(("query_block", "bank_block"), [(64, 128), (1000, 5000)])
def test_distances_equal_scikit_learns(query_block, bank_block):
    rng = np.random.default_rng(0)
    bank, queries = points(rng, 1000, 9), points(rng, 333, 9)  # Neither a multiple of a block.
    distances, index = knn_distances(
        queries, bank, 4, query_block=query_block, bank_block=bank_block
    )
    expected, expected_index = NearestNeighbors(n_neighbors=4).fit(bank).kneighbors(queries)
    np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-5)
    assert (index == expected_index).mean() > 0.99  # Ties aside, the same neighbours.
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_leave_one_group_out_never_matches_its_own_group():
    rng = np.random.default_rng(1)
    bank = points(rng, 600, 5)
    groups = np.repeat(np.arange(6), 100)
    distances, index = knn_distances(
        bank, bank, 3, query_groups=groups, bank_groups=groups, query_block=128, bank_block=256
    )
    assert np.all(groups[index] != groups[:, None])
    assert np.all(distances > 0)  # Without exclusion each point's nearest is itself, at 0.
    for g in range(6):  # The same as scikit-learn fitted on the other groups only.
        others = np.flatnonzero(groups != g)
        fit = NearestNeighbors(n_neighbors=3).fit(bank[others])
        expected, expected_index = fit.kneighbors(bank[groups == g])
        np.testing.assert_allclose(distances[groups == g], expected, rtol=1e-5, atol=1e-5)
        assert (index[groups == g] == others[expected_index]).mean() > 0.99
    plain, _ = knn_distances(bank, bank, 1)
    np.testing.assert_array_equal(plain, 0.0)


def test_too_few_rows_of_other_groups_give_infinity_and_bad_input_is_refused():
    bank = np.arange(8, dtype=np.float32).reshape(4, 2)
    groups = np.array([0, 0, 0, 1])
    distances, _ = knn_distances(bank, bank, 2, query_groups=groups, bank_groups=groups)
    assert np.isfinite(distances[:3, 0]).all() and np.isinf(distances[:3, 1]).all()
    assert np.isfinite(distances[3]).all()
    with pytest.raises(ValueError, match="k must be in"):
        knn_distances(bank, bank, 5)
    with pytest.raises(ValueError, match="both query_groups and bank_groups"):
        knn_distances(bank, bank, 1, query_groups=groups)
    with pytest.raises(ValueError, match=r"queries \[Q, D\]"):
        knn_distances(bank[:, :1], bank, 1)
