"""The Mixture of Experts' dispatches (issue 22): dropless, ragged, capacity and dense compute
one model with one set of parameters; dropless never lets a sequence's batch-mates change its
logits; the model FLOPs the engine records count k experts per token whatever the dispatch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs._experts import block_rows, num_blocks
from archbench.archs.moe import DISPATCHES
from archbench.cli.main import main
from archbench.engine import measure
from archbench.engine.cell import Cell
from tests.test_compare import make_row, write_results

SPEC = archs.get("moe")


def _params(module, x, std=0.3, seed=1):
    """Random float32 parameters drawn in NumPy, large enough that routing is uneven (some
    experts get far more than their share) and a capacity dispatch drops choices."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (std * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@functools.cache
def _forward(dispatch: str, factor: float | None = None):
    fields = {"dispatch": dispatch} | ({"capacity_factor": factor} if factor else {})
    module = SPEC.build("tiny", **fields)

    @jax.jit
    def run(params, x):  # logits and the loss gradients of a training-mode forward pass
        def loss(p):
            logits, _ = module.apply({"params": p}, x, train=True, mutable=["losses"])
            return jnp.mean(logits**2), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, grads

    return module, run


def _tokens(batch, seed=3):
    config = SPEC.size("tiny").config
    return jax.random.randint(jax.random.key(seed), (batch, 16), 0, config["vocab_size"])


def test_the_dispatches_are_variants_and_dropless_is_the_default():
    assert set(DISPATCHES) == {"dropless", "ragged", "capacity", "dense"} <= set(SPEC.variants)
    assert SPEC.build("tiny").dispatch == "dropless"
    assert SPEC.build("tiny", **SPEC.variant("capacity")).capacity_factor == 1.25
    with pytest.raises(ValueError, match="dispatch 'bogus'; valid: dropless"):
        SPEC.build("tiny", dispatch="bogus")


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dispatch", ["dropless", "ragged"])
def test_dropless_dispatches_equal_dense_for_any_batch(dispatch, batch):
    x = _tokens(batch)
    module, run = _forward(dispatch)
    params = _params(module, x)
    logits, grads = run(params, x)
    want_logits, want_grads = _forward("dense")[1](params, x)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-3, atol=1e-5)
    jax.tree.map(close, grads, want_grads)


def test_capacity_equals_dense_when_no_choice_overflows():
    x = _tokens(4)
    config = SPEC.size("tiny").config
    module, run = _forward("capacity", config["num_experts"] / config["top_k"])
    params = _params(module, x)
    np.testing.assert_allclose(
        run(params, x)[0], _forward("dense")[1](params, x)[0], rtol=1e-4, atol=1e-4
    )


def test_a_sequence_depends_on_its_batch_mates_only_under_capacity():
    """Sequence 0 alone and among 7 others: the same logits under dropless (and dense); under
    capacity, its batch-mates take expert slots its tokens would have had."""
    crowd = _tokens(8)
    module, _ = _forward("dropless")
    params = _params(module, crowd)
    apply = lambda m: jax.jit(lambda p, x: m.apply({"params": p}, x))  # noqa: E731
    for dispatch in ("dropless", "dense"):
        m = SPEC.build("tiny", dispatch=dispatch)
        alone, among = apply(m)(params, crowd[:1]), apply(m)(params, crowd)[:1]
        np.testing.assert_allclose(alone, among, rtol=1e-5, atol=1e-5)
    m = SPEC.build("tiny", dispatch="capacity")  # factor 1.25
    alone, among = apply(m)(params, crowd[:1]), apply(m)(params, crowd)[:1]
    assert float(jnp.abs(alone - among).max()) > 1e-3


def moe_forward_flops(batch: int) -> int:
    """Multiply-adds x 2 of moe small's forward pass, written out per token."""
    c = SPEC.size("small").config
    d, f, e, k, v = c["width"], c["mlp_dim"], c["num_experts"], c["top_k"], c["vocab_size"]
    t = SPEC.size("small").input.shape[0]
    kv = c["num_kv_heads"] * d // c["num_heads"]  # key/value width K Dh
    per_layer = (
        2 * 2 * d * d  # query and output projections
        + 2 * 2 * d * kv  # key and value projections (grouped-query)
        + 2 * 2 * t * d  # q k^T and the weights times v, over all T positions (causal mask)
        + 2 * d * e  # router
        + k * 3 * 2 * d * f  # k of E experts' SwiGLU: w1, w3 (D x F) and w2 (F x D)
        + 2 * k * d  # the gate-weighted sum of the k expert outputs
    )
    return batch * t * (c["num_layers"] * per_layer + 2 * d * v)  # + the unembedding


@pytest.mark.parametrize("variant", [None, "capacity", "dense"])
def test_model_flops_count_k_experts_per_token_whatever_the_dispatch(variant):
    batch = 2
    prepared = measure.prepare(Cell("moe", "small", "infer", batch, "float32", variant=variant))
    facts = prepared.facts
    assert facts["model_flops_per_step"] == pytest.approx(moe_forward_flops(batch), rel=0.02)
    if variant == "dense":  # executed: every expert on every token, E / k times the experts'
        assert facts["flops_per_step"] > 2 * facts["model_flops_per_step"]
    else:  # the dropless blocks' padding, or the capacity's spare slots
        assert facts["flops_per_step"] >= facts["model_flops_per_step"]


def test_report_shows_executed_and_model_flops_of_each_dispatch(tmp_path):
    model = 5.73e9
    rows = [
        make_row("moe", mode="infer", flops_per_step=6.43e9, model_flops_per_step=model),
        make_row(
            "moe", mode="infer", flops_per_step=15.5e9, model_flops_per_step=model, variant="dense"
        ),
        make_row("gpt", mode="infer", flops_per_step=1e9, model_flops_per_step=1e9),
    ]
    path = write_results(tmp_path / "moe.json", rows)
    assert main(["report", path, "--md", str(tmp_path / "moe.md")]) == 0
    lines = (tmp_path / "moe.md").read_text().splitlines()
    moe = [line for line in lines if line.startswith("| moe/")]
    assert len(moe) == 2 and "6.43 G (model 5.73 G)" in moe[0]
    assert "dense" in moe[1] and "15.5 G (model 5.73 G)" in moe[1]
    gpt = next(line for line in lines if line.startswith("| gpt/"))
    assert "| 1 G |" in gpt  # the same count twice: shown once


def test_dropless_blocks_hold_any_routing():
    assert [block_rows(c, 8) for c in (2, 64, 8192)] == [1, 16, 128]  # decode 1, 32; small B 32
    rng = np.random.default_rng(0)
    for choices in (2, 7, 64, 1000, 8192):
        b = block_rows(choices, 8)
        for counts in (rng.multinomial(choices, [1 / 8] * 8), [choices] + [0] * 7):
            assert sum(-(-g // b) for g in counts) <= num_blocks(choices, 8, b)
