"""archs._matmul: dense layers multiply 2-D operands, so that XLA:CPU keeps their weight
gradients out of its slow dot form (docs/performance.md, "Weight gradients on the slow dot
form")."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from archbench.archs import _logical, _matmul

# a dot whose left operand contracts dimension 0 and right operand dimension 1
SLOW_FORM = re.compile(r"lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{1\}")


@pytest.mark.parametrize(
    ("lhs", "rhs", "numbers"),
    [
        ((4, 6, 8), (8, 5), (((2,), (0,)), ((), ()))),  # nn.Dense on (B, T, D)
        ((4, 6, 8), (8, 3, 2), (((2,), (0,)), ((), ()))),  # DenseGeneral to (heads, kv)
        ((4, 6, 3, 2), (3, 2, 8), (((2, 3), (0, 1)), ((), ()))),  # (heads, kv) back to D
        ((4, 8), (8, 5), (((1,), (0,)), ((), ()))),  # already 2-D: lax's own
        ((4, 6, 8), (4, 8, 5), (((2,), (1,)), ((0,), (0,)))),  # batch dims: lax's own
    ],
)
def test_the_product_is_lax_dot_generals(lhs, rhs, numbers):
    a = jax.random.normal(jax.random.key(0), lhs)
    b = jax.random.normal(jax.random.key(1), rhs)
    want = lax.dot_general(a, b, numbers)
    got = _matmul.dot_general(a, b, numbers)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_dense_layers_kernel_gradient_is_not_a_slow_form_dot():
    x = jax.random.normal(jax.random.key(0), (8, 16, 32))  # (B, T, D), as a sequence model's
    layer = nn.Dense(48, **_logical.dense(("embed",), ("mlp",)))
    params = layer.init(jax.random.key(1), x)

    def loss(p, x):
        return jnp.sum(jnp.tanh(layer.apply(p, x)) ** 2)

    grad = jax.jit(jax.grad(loss))
    text = grad.lower(params, x).compile().as_text()
    dots = [line for line in text.splitlines() if re.search(r" dot\(", line)]
    assert dots, "no dot in the program"
    assert not [line for line in dots if SLOW_FORM.search(line)], dots
    # the same gradient as lax.dot_general's layer
    plain = nn.Dense(48, kernel_init=nn.initializers.lecun_normal())
    want = jax.grad(lambda p, x: jnp.sum(jnp.tanh(plain.apply(p, x)) ** 2))(params, x)
    got = grad(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        # sums of 128 products in another order: float32 rounding of the gradient's scale
        assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(b)), np.max(np.abs(a - b))
