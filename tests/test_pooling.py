"""archs._pooling.max_pool against flax's nn.max_pool: the same values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench.archs._pooling import max_pool

CASES = [
    ((2, 16, 16, 8), (3, 3), (1, 1), "SAME"),  # inception's blocks
    ((2, 16, 16, 8), (3, 3), (2, 2), "SAME"),  # inception's reductions
    ((2, 15, 15, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # resnet's ImageNet stem
    ((2, 8, 8, 3), (2, 2), (2, 2), "VALID"),
]


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), CASES, ids=str)
def test_values_and_gradients_equal_flax_max_pool_ties_included(shape, window, strides, padding):
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))
    x = jnp.round(x * 2) / 2  # many equal values in a window: where the gradient goes matters
    pooled = nn.max_pool(x, window, strides, padding)
    weights = jax.random.normal(jax.random.key(1), pooled.shape)
    grad = lambda pool: jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * weights)))(x)  # noqa: E731
    ours = grad(lambda x: max_pool(x, window, strides, padding))
    theirs = grad(lambda x: nn.max_pool(x, window, strides, padding))
    np.testing.assert_array_equal(max_pool(x, window, strides, padding), pooled)
    # The same inputs get gradient; overlapping windows' shares are summed in another order.
    np.testing.assert_array_equal(ours != 0, theirs != 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(theirs).sum()) > 0
