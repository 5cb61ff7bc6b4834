"""Numerics of the Mixture-of-Experts family against hand-written float64 NumPy references.

The references read the layer's own parameters and never call it: top-k routing with the
softmax over the chosen logits, a loop over tokens and their chosen experts that fills each
expert's capacity in order (first choices before second ones), Switch's load-balancing loss,
the FLOPs of the expert slots actually computed, and the training loss with the aux loss in.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archbench import archs
from archbench.archs._experts import capacity
from archbench.archs.moe import DISPATCHES, RoutedExperts, route
from archbench.cli.list_cmd import list_rows
from archbench.cli.main import main
from archbench.engine import analysis
from archbench.train.steps import TrainState, loss_and_metrics, train_step
from tests.test_compare import make_row, write_results

E, K, D, F = 4, 2, 8, 16  # experts, top-k, width, expert width


def _silu(x):
    return x / (1 + np.exp(-x))


def _softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _params(module, x, std=0.5, seed=1):
    """Random float32 parameters of the module's own tree, drawn in NumPy; by default a large
    std, so that the router's choices and the experts' outputs differ clearly (RMSNorm
    scales too: the tests need no particular value)."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), x))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (std * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def moe_reference(x, p, top_k, slots):
    """y (N, D) of routed SwiGLU experts by a loop, the chosen experts (N, k), and the
    number of choices dropped for lack of a slot. x: (N, D) float64."""
    logits = x @ p["router"]["kernel"]  # (N, E)
    n, e = logits.shape
    chosen = np.argsort(-logits, axis=1)[:, :top_k]  # (N, k), best first
    gates = _softmax(np.take_along_axis(logits, chosen, axis=1))  # (N, k)
    w = p["experts"]
    used, dropped, y = np.zeros(e, int), 0, np.zeros_like(x)
    for rank in range(top_k):  # every token's first choice before any second choice
        for t in range(n):
            ex = chosen[t, rank]
            if used[ex] == slots:
                dropped += 1
                continue
            used[ex] += 1
            h = _silu(x[t] @ w["w1"][ex]) * (x[t] @ w["w3"][ex])  # (F,)
            y[t] += gates[t, rank] * (h @ w["w2"][ex])
    return y, chosen, dropped


def test_route_takes_the_top_k_and_renormalises_over_them():
    logits = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    experts, gates = route(jnp.asarray(logits), 3)
    want = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_array_equal(np.asarray(experts), want)
    top = np.take_along_axis(logits.astype(np.float64), want, axis=1)
    np.testing.assert_allclose(np.asarray(gates), _softmax(top), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gates).sum(-1), 1.0, rtol=1e-6)


def test_capacity_is_the_balanced_share_times_the_factor_within_one_and_n():
    assert capacity(64, 8, 2, 1.25) == 20  # ceil(1.25 * 2 * 64 / 8)
    assert capacity(12, 4, 2, 0.5) == 3
    assert capacity(12, 4, 2, E / K) == 12  # dropless: every token fits in any expert
    assert capacity(12, 4, 2, 100.0) == 12 and capacity(3, 8, 1, 0.1) == 1


DROPLESS = [d for d in DISPATCHES if d != "capacity"]  # dropless, ragged, dense
CASES = [("capacity", E / K), ("capacity", 0.5)] + [(d, None) for d in DROPLESS]


@pytest.mark.parametrize(("dispatch", "factor"), CASES, ids=["capacity-E/k", "drops", *DROPLESS])
def test_layer_and_aux_loss_match_a_token_loop(dispatch, factor):
    x = np.random.default_rng(2).standard_normal((2, 6, D)).astype(np.float32)  # N = 12
    fields = {"capacity_factor": factor} if factor else {}
    layer = RoutedExperts(F, num_experts=E, top_k=K, dispatch=dispatch, aux_loss_coef=0.3, **fields)
    params = _params(layer, x)
    y, sown = jax.jit(lambda p, x: layer.apply({"params": p}, x, mutable=["losses"]))(params, x)

    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    tokens = x.reshape(-1, D).astype(np.float64)
    slots = capacity(12, E, K, factor) if factor else 12  # a dropless dispatch: N slots
    want, chosen, dropped = moe_reference(tokens, p64, K, slots)
    assert (dropped > 0) == (factor == 0.5)  # the dropping case drops, the others do not
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D), want, rtol=2e-4, atol=2e-5)

    # Switch eq. 4 by hand: f_i over the N k choices, P_i the mean softmax over all experts.
    f = np.bincount(chosen.ravel(), minlength=E) / chosen.size
    prob = _softmax(tokens @ p64["router"]["kernel"]).mean(axis=0)
    (aux,) = sown["losses"]["load_balance"]
    assert float(aux) == pytest.approx(0.3 * E * np.sum(f * prob), rel=1e-5)


def test_flops_count_only_the_expert_slots_computed():
    n, d, f, e, k = 64, 32, 64, 8, 2
    layer = RoutedExperts(f, num_experts=e, top_k=k, dispatch="capacity")  # factor 1.25
    x = jnp.zeros((2, n // 2, d))
    params = nn.unbox(jax.eval_shape(layer.init, jax.random.key(0), x))["params"]
    counted, _ = analysis.cost(jax.jit(layer.apply).lower({"params": params}, x).compile())
    slots = math.ceil(1.25 * k * n / e)  # 20 of each expert's 64 possible tokens
    analytic = (
        e * slots * 3 * 2 * d * f  # w1, w3 and w2 of every slot
        + 2 * n * d * e  # router
        + 2 * k * n * d  # gate-weighted sum of the k outputs
    )
    assert counted == pytest.approx(analytic, rel=0.10)
    every_expert = n * e * 3 * 2 * d * f  # what computing all experts and masking would count
    assert counted < 0.4 * every_expert


def test_train_loss_is_cross_entropy_plus_the_sown_aux_loss():
    spec = archs.get("moe")
    module, inputs = spec.build("tiny"), spec.size("tiny").input
    x = inputs.example(jax.random.key(1), 4)
    params = _params(module, x, std=0.02)  # drawn in NumPy: no init to compile
    state = TrainState.create(
        apply_fn=module.apply, params=params, tx=optax.sgd(0.1), dropout_key=jax.random.key(0)
    )
    batch = {"x": x, "y": jnp.roll(x, -1, axis=1)}
    forward = jax.jit(lambda p, x: module.apply({"params": p}, x, train=True, mutable=["losses"]))
    logits, sown = forward(state.params, x)
    cross_entropy = float(loss_and_metrics(logits, batch["y"])[0])
    aux = sum(float(a) for a in jax.tree.leaves(sown))
    assert len(jax.tree.leaves(sown)) == module.num_layers and aux > 0
    _, metrics = jax.jit(train_step)(state, batch)
    assert float(metrics["aux_loss"]) == pytest.approx(aux, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(cross_entropy + aux, rel=1e-6)
    # balanced routing gives E * sum(1/E * 1/E) = 1 per layer; a fresh router is near it
    assert aux == pytest.approx(module.num_layers * module.aux_loss_coef, rel=0.25)


def test_parameter_counts_follow_the_derivation_in_list_and_registry():
    rows = {r["size"]: r for r in list_rows("moe")}  # `archbench list moe --json`
    for size, row in rows.items():
        c = archs.get("moe").size(size).config
        v, d, layers, f, e = (c[k] for k in ("vocab_size", "width", "num_layers", "mlp_dim",
                                             "num_experts"))  # fmt: skip
        kv = c["num_kv_heads"] * d // c["num_heads"]
        expert = 3 * d * f
        total = 2 * v * d + layers * (2 * d * d + 2 * d * kv + d * e + e * expert + 2 * d) + d
        active = total - layers * (e - c["top_k"]) * expert
        assert (row["params"], row["active_params"]) == (total, active), size
    assert rows["8x7b"]["active_params"] == rows["8x7b"]["published_active_params"]
    assert archs.active_param_count("llama", "tiny") == archs.param_count("llama", "tiny")


def test_report_shows_active_parameters_only_for_sparse_models(tmp_path):
    moe = make_row("moe", params=63_904, active_params=39_328)
    dense = make_row("gpt", params=30_080, active_params=30_080)
    old = make_row("mlp")  # a results file from before the key: no active_params at all
    for name, rows in (("sparse", [moe, dense, old]), ("dense", [dense, old])):
        path = write_results(tmp_path / f"{name}.json", rows)
        assert main(["report", path, "--md", str(tmp_path / f"{name}.md")]) == 0
    sparse = (tmp_path / "sparse.md").read_text()
    header = next(line for line in sparse.splitlines() if line.startswith("| architecture"))
    assert header.split("|")[2:4] == [" params ", " active params "]
    moe_line = next(line for line in sparse.splitlines() if line.startswith("| moe/tiny"))
    assert moe_line.split("|")[2:4] == [" 63.9 k ", " 39.3 k "]
    assert "active params" not in (tmp_path / "dense.md").read_text()
