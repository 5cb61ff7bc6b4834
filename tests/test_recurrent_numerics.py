"""The recurrent cells against their equations written out in NumPy, step by step.

Each reference takes the module's own parameters, loops over T in float64 and must match the
module's float32 logits. Stacks and bidirectional layers are rebuilt here from single layers,
so the wiring (layer 1's whole sequence feeds layer 2; the backward layer reads the reversed
sequence) is checked as well as the cells.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from archbench import archs

B = 3


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def elman_layer(p, x, act=np.tanh):
    w, b, u = p["kernel"], p["bias"], p["recurrent_kernel"]
    h = np.zeros((x.shape[0], u.shape[0]))
    out = []
    for t in range(x.shape[1]):
        h = act(x[:, t] @ w + b + h @ u)
        out.append(h)
    return np.stack(out, axis=1)  # (B, T, H)


def lstm_layer(p, x):
    w, b, u = p["kernel"], p["bias"], p["recurrent_kernel"]
    n = u.shape[0]
    h = c = np.zeros((x.shape[0], n))
    out = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w + b + h @ u
        i, f, g, o = (z[:, k * n : (k + 1) * n] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def gru_layer(p, x):
    """PyTorch's nn.GRU equations: b_i* input biases, b_h* recurrent biases."""
    w, b_i, u, b_h = (
        p["kernel"],
        p["bias"],
        p["recurrent_kernel"],
        p["recurrent_bias"],
    )
    n = u.shape[0]
    h = np.zeros((x.shape[0], n))
    out = []
    for t in range(x.shape[1]):
        gi, gh = x[:, t] @ w + b_i, h @ u + b_h
        r = sigmoid(gi[:, :n] + gh[:, :n])
        z = sigmoid(gi[:, n : 2 * n] + gh[:, n : 2 * n])
        cand = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
        h = (1 - z) * cand + z * h
        out.append(h)
    return np.stack(out, axis=1)


def reference_logits(layer, params, x, depth, bidirectional=False, readout="last"):
    """A stack of `depth` layers and the dense head, in float64."""
    for i in range(depth):
        if bidirectional:
            fwd = layer(params[f"layer{i}_fwd"], x)
            bwd = layer(params[f"layer{i}_bwd"], x[:, ::-1])[:, ::-1]  # read backwards
            x = np.concatenate([fwd, bwd], axis=-1)  # (B, T, 2H)
        else:
            x = layer(params[f"layer{i}"], x)  # the whole sequence feeds the next layer
    if readout == "flatten":
        feats = x.reshape(x.shape[0], -1)  # PyTorch's output.reshape(B, -1)
    elif bidirectional:
        n = x.shape[-1] // 2
        feats = np.concatenate([x[:, -1, :n], x[:, 0, n:]], axis=-1)  # h_n of both directions
    else:
        feats = x[:, -1]
    return feats @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]


def run(name, size="tiny", **overrides):
    """(module logits, params as float64 NumPy, inputs as float64 NumPy, module)."""
    spec = archs.get(name)
    module = spec.build(size, **overrides)
    input_spec = spec.size(size).input
    params = archs.init_variables(module, input_spec, jax.random.key(0))["params"]
    x = input_spec.example(jax.random.key(1), B)
    logits = module.apply({"params": params}, x)
    as64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    return np.asarray(logits), as64, np.asarray(x, np.float64), module


def check(logits, expected):
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def np_relu(z):
    return np.maximum(z, 0)


@pytest.mark.parametrize(
    ("act", "np_act"), [(nn.tanh, np.tanh), (nn.relu, np_relu)], ids=["tanh", "relu"]
)
def test_rnn_elman_cell(act, np_act):
    logits, params, x, _ = run("rnn", act=act)
    check(logits, reference_logits(lambda p, x: elman_layer(p, x, np_act), params, x, 1))


def test_deep_rnn_feeds_each_layer_the_whole_sequence_below():
    logits, params, x, module = run("deep_rnn")
    assert len(module.hidden) == 2
    check(logits, reference_logits(elman_layer, params, x, 2))


def test_lstm_cell():
    logits, params, x, _ = run("lstm")
    check(logits, reference_logits(lstm_layer, params, x, 1))


def test_two_layer_lstm_of_different_widths():
    logits, params, x, _ = run("lstm", hidden=(12, 7))
    assert params["layer1"]["kernel"].shape == (12, 28)  # reads layer 0's (B, T, 12)
    check(logits, reference_logits(lstm_layer, params, x, 2))


def test_lstm_forget_gate_bias_starts_at_one():
    _, params, _, _ = run("lstm")
    n = params["layer0"]["recurrent_kernel"].shape[0]
    expected = np.concatenate([np.zeros(n), np.ones(n), np.zeros(2 * n)])
    np.testing.assert_array_equal(params["layer0"]["bias"], expected)


def test_gru_cell():
    logits, params, x, _ = run("gru")
    check(logits, reference_logits(gru_layer, params, x, 1))


def test_lstm_bidirectional_last_state_readout():
    logits, params, x, _ = run("lstm", bidirectional=True)
    check(logits, reference_logits(lstm_layer, params, x, 1, bidirectional=True))


def test_mnist1d_gru_is_the_bidirectional_flattened_baseline():
    logits, params, x, _ = run("gru", "mnist1d")
    assert params["Dense_0"]["kernel"].shape == (40 * 2 * 6, 10)
    expected = reference_logits(gru_layer, params, x, 1, bidirectional=True, readout="flatten")
    check(logits, expected)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("rnn", {}), ("deep_rnn", {}), ("lstm", {}), ("gru", {"bidirectional": True})],
)
def test_full_unroll_equals_scan(name, overrides):
    spec = archs.get(name)
    input_spec = spec.size("tiny").input
    steps = input_spec.shape[0]
    scanned = spec.build("tiny", unroll=1, **overrides)
    unrolled = spec.build("tiny", unroll=steps, **overrides)
    variables = archs.init_variables(scanned, input_spec, jax.random.key(0))
    x = input_spec.example(jax.random.key(1), B)
    np.testing.assert_allclose(
        unrolled.apply(variables, x), scanned.apply(variables, x), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("features", [4, 1], ids=["F4", "F1"])
def test_rnn_full_unroll_lets_cost_analysis_count_every_step_once(features):
    """XLA counts a scan body once; the benchmark relies on unroll=T to count all T steps.

    Fully unrolled, the count must be the matmuls of every step plus a little gate arithmetic:
    an elementwise producer fused into each step (the input bias, or with F = 1 the whole
    projection) would be counted T times over, a T^2 term.
    """
    spec = archs.get("rnn")
    steps, hidden = 32, spec.size("tiny").config["hidden"][0]
    input_spec = archs.InputSpec("sequence", (steps, features))
    x = input_spec.example(jax.random.key(1), B)

    def flops(unroll):
        module = spec.build("tiny", unroll=unroll)
        variables = archs.init_variables(module, input_spec, jax.random.key(0))
        compiled = jax.jit(module.apply).lower(variables, x).compile()
        cost = compiled.cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    matmuls = 2 * B * steps * (features * hidden + hidden * hidden) + 2 * B * hidden * 10
    assert flops(1) < matmuls / 4
    assert matmuls <= flops(steps) <= 1.15 * matmuls
