"""FLOPs per step that the benchmark reports, against analytic counts of the same models.

XLA's cost analysis counts a loop body once; recurrent cells are lowered again fully unrolled
(`flops_source: xla-unrolled`), and these tests check both the counts and that flag.
"""

import jax
import jax.numpy as jnp
import pytest

from archbench import archs
from archbench.engine import analysis, measure
from archbench.engine.measure import Cell


def flops(cell: Cell) -> tuple[float, measure.Prepared]:
    prepared = measure.prepare(cell)
    return prepared.facts["flops_per_step"], prepared


def test_lenet5_forward_flops_match_its_multiply_adds():
    batch = 16
    macs = (
        28 * 28 * 6 * (5 * 5 * 1)  # C1
        + 10 * 10 * 16 * (5 * 5 * 6)  # C3
        + 120 * (5 * 5 * 16)  # C5
        + 120 * 84  # F6
        + 84 * 10  # output
    )
    counted, _ = flops(Cell("lenet5", "small", "infer", batch, "float32"))
    assert counted == pytest.approx(2 * batch * macs, rel=0.10)


def test_mlp_flops_match_forward_and_backward_matmuls():
    batch, layers = 128, [(784, 512), (512, 512), (512, 10)]
    forward = 2 * batch * sum(i * o for i, o in layers)
    # Backward: weight gradients for every layer, input gradients for all but the first.
    backward = forward + 2 * batch * sum(i * o for i, o in layers[1:])
    infer, _ = flops(Cell("mlp", "small", "infer", batch, "float32"))
    train, _ = flops(Cell("mlp", "small", "train", batch, "float32"))
    assert infer == pytest.approx(forward, rel=0.10)
    assert train == pytest.approx(forward + backward, rel=0.10)


def lstm_flops(batch, steps, mode):
    spec = archs.get("lstm")
    features = spec.size("small").input.shape[1]
    (hidden,) = spec.size("small").config["hidden"]
    gates = 4 * hidden
    if mode == "infer":  # x W and h U of every step
        return 2 * batch * steps * gates * (features + hidden)
    # forward, weight gradients of W and U, input gradient through U only
    return 2 * batch * steps * gates * (2 * features + 3 * hidden)


def test_lstm_forward_flops_count_every_time_step(lstm_infer):
    cell, prepared = lstm_infer
    counted = prepared.facts["flops_per_step"]
    assert prepared.facts["flops_source"] == "xla-unrolled"
    assert counted == pytest.approx(lstm_flops(cell.batch, cell.seq_len, "infer"), rel=0.10)
    rolled, _ = analysis.cost(prepared.compiled)  # XLA alone counts the scan body once
    assert rolled < 0.5 * counted


def test_lstm_train_flops_count_every_time_step_of_both_scans():
    counted, prepared = flops(Cell("lstm", "small", "train", 16, "float32", seq_len=8))
    assert prepared.facts["flops_source"] == "xla-unrolled"
    assert counted == pytest.approx(lstm_flops(16, 8, "train"), rel=0.10)


def test_loops_of_matmuls_are_flagged_unless_unrolled():
    w = jnp.ones((4, 4))

    def scan(unroll):
        step = lambda h, _: (jnp.tanh(h @ w), None)  # noqa: E731
        return jax.make_jaxpr(lambda h: jax.lax.scan(step, h, length=6, unroll=unroll)[0])(w)

    assert analysis.loop_undercount(scan(1))
    assert analysis.loop_undercount(jax.make_jaxpr(jax.grad(lambda h: scan_sum(h, w)))(w))
    assert not analysis.loop_undercount(scan(6))
    no_matmul = jax.make_jaxpr(lambda x: jax.lax.fori_loop(0, 5, lambda i, x: x * 2.0, x))(w)
    assert not analysis.loop_undercount(no_matmul)
    assert not analysis.loop_undercount(jax.make_jaxpr(lambda x: x @ x)(w))


def scan_sum(h, w):
    return jax.lax.scan(lambda h, _: (jnp.sin(h @ w), None), h, length=3)[0].sum()


def test_gpt_forward_flops_match_transformer_layer_counts():
    spec = archs.get("gpt")
    c = spec.size("small").config
    layers, width, mlp, vocab = c["num_layers"], c["width"], c["mlp_dim"], c["vocab_size"]
    batch, steps = 2, spec.size("small").input.shape[0]
    per_token = (
        layers
        * (
            2 * 4 * width * width  # q, k, v and output projections
            + 2 * 2 * width * mlp  # the two MLP matmuls
            + 2 * 2 * steps * width  # q k^T and attention @ v over all T positions
        )
        + 2 * width * vocab
    )  # tied output projection
    counted, prepared = flops(Cell("gpt", "small", "infer", batch, "float32"))
    assert prepared.facts["flops_source"] == "xla"
    assert counted == pytest.approx(batch * steps * per_token, rel=0.10)
