"""Each operation's FLOPs and bytes, read from a compiled program's optimized HLO
(archbench.engine.hlo_cost): what the per-operation roofline joins with a trace."""

import jax
import jax.numpy as jnp
import pytest

from archbench.engine import hlo_cost


def _compiled(fn, *shapes):
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.jit(fn).lower(*args).compile()


def _products(ops: dict) -> list[hlo_cost.Op]:
    return [op for op in ops.values() if op.flops]


def test_a_plain_matmul_is_two_m_n_k_and_its_operands_and_result_in_bytes():
    m, k, n = 24, 40, 8
    ops = hlo_cost.operations(_compiled(lambda a, b: a @ b, (m, k), (k, n)).as_text())
    (product,) = _products(ops)
    assert product.flops == 2 * m * n * k
    assert product.kind in ("dot", "dot fusion")
    assert product.bytes == 4 * (m * k + k * n + m * n)
    assert product.calls == 1


def test_a_batched_product_counts_its_batch():
    b, m, k, n = 3, 8, 16, 5
    fn = lambda x, y: jnp.einsum("bij,bjk->bik", x, y)  # noqa: E731
    text = _compiled(fn, (b, m, k), (b, k, n)).as_text()
    assert hlo_cost.product_flops(text) == 2 * b * m * n * k


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(window_strides=(1, 1), padding="SAME"),  # border taps fall in the padding
        dict(window_strides=(2, 2), padding="SAME", rhs_dilation=(2, 1)),
        dict(window_strides=(1, 1), padding="VALID", feature_group_count=4),
    ],
    ids=["same", "strided-dilated", "grouped"],
)
def test_convolutions_count_what_xla_counts(kwargs):
    """XLA's cost analysis counts only the kernel taps that land inside the input; so does
    hlo_cost, forward and in the gradients (whose convolutions dilate the input)."""
    groups = kwargs.get("feature_group_count", 1)

    def conv(x, k):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, k, dimension_numbers=dims, **kwargs)

    def grads(x, k):
        return jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1))(x, k)

    for fn in (conv, grads):
        compiled = _compiled(fn, (2, 12, 12, 8), (3, 3, 8 // groups, 12))
        assert hlo_cost.product_flops(compiled.as_text()) == compiled.cost_analysis()["flops"]


def test_a_loop_body_runs_its_trip_count_and_the_loop_is_a_container():
    def scan(w, xs):
        return jax.lax.scan(lambda h, x: (jnp.tanh(h @ w + x), None), jnp.zeros((4, 32)), xs)[0]

    steps = 7
    ops = hlo_cost.operations(_compiled(scan, (32, 32), (steps, 4, 32)).as_text())
    (product,) = _products(ops)
    assert product.flops == 2 * 4 * 32 * 32 and product.calls == steps
    loop = next(op for op in ops.values() if op.kind == "while")
    assert product.computation in loop.called and loop.flops == 0


def test_text_without_an_entry_computation_is_an_error():
    with pytest.raises(ValueError, match="ENTRY"):
        hlo_cost.operations("HloModule empty\n")
