"""The weak supervision losses (`jaxvad.weak_losses`) against hand-computed values."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxvad import weak_losses


def test_top_k_mean_takes_the_k_largest_valid_snippets_and_caps_k_by_the_length():
    values = jnp.array([[1.0, 5.0, 3.0, 9.0], [4.0, 2.0, 100.0, 100.0], [7.0, 0.0, 0.0, 0.0]])
    length = jnp.array([4, 2, 1])  # Padded snippets (100) never count.
    np.testing.assert_allclose(weak_losses.top_k_mean(values, length, 2), [7.0, 3.0, 7.0])
    np.testing.assert_allclose(weak_losses.top_k_mean(values, length, 9), [4.5, 3.0, 7.0])
    per_class = jnp.stack([values, -values], axis=-1)  # [B, T, C]
    np.testing.assert_allclose(
        weak_losses.top_k_mean(per_class, length, 2), [[7.0, -2.0], [3.0, -3.0], [7.0, -7.0]]
    )


def test_mil_bce_is_the_cross_entropy_of_the_sigmoid_of_the_top_k_mean():
    logits = jnp.array([[2.0, -1.0, 0.0], [0.5, 1.5, -3.0]])
    length, label = jnp.array([3, 2]), jnp.array([1, 0])
    # Video 0: mean(2, 0) = 1 → −log σ(1); video 1: mean(1.5, 0.5) = 1 → −log(1 − σ(1)).
    sigma = 1 / (1 + math.exp(-1.0))
    expected = (-math.log(sigma) - math.log(1 - sigma)) / 2
    np.testing.assert_allclose(weak_losses.mil_bce(logits, length, label, 2), expected, rtol=1e-6)


def test_mil_align_nce_is_the_softmax_cross_entropy_with_several_categories_shared():
    logits = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 2.0]])
    categories = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    log_z0, log_z1 = math.log(math.e + 2), math.log(1 + 2 * math.e**2)
    expected = ((log_z0 - 1.0) + (log_z1 - 2.0)) / 2  # Video 1: ½ on each of its classes.
    np.testing.assert_allclose(weak_losses.mil_align_nce(logits, categories), expected, rtol=1e-6)
