"""Numerics of the Mamba family: its two selective scans, one mixer against its equations
written out step by step, causality, and the FLOPs the benchmark counts through the scan."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs.mamba import MambaMixer, selective_scan
from archbench.engine import analysis, measure
from archbench.engine.measure import Cell

SCANS = ["scan", "assoc"]


def _scan_inputs(seed=0, batch=2, length=40, inner=8, state=4):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    x = normal(batch, length, inner)
    dt = np.logaddexp(0, normal(batch, length, inner) - 1)  # Δ > 0
    a = -np.exp(normal(inner, state))  # A < 0
    return x, dt, a, normal(batch, length, state), normal(batch, length, state)


# Against the sequential scan as the model runs it (remat: two chunks of 16 steps, then 8):
# without rematerialisation, unrolled, and the associative scan.
VARIANTS = [("scan", 1, False), ("scan", 5, True), ("assoc", 1, True)]


def test_sequential_and_associative_scans_agree_with_their_gradients():
    args = _scan_inputs()
    weights = np.random.default_rng(1).standard_normal(args[0].shape, np.float32)

    @functools.partial(jax.jit, static_argnames=("method", "unroll", "remat"))
    def run(*args, **kw):
        y, vjp = jax.vjp(functools.partial(selective_scan, **kw), *args)
        return y, vjp(weights)

    want_y, want_grads = run(*args, method="scan", unroll=1, remat=True)
    assert want_y.dtype == jnp.float32 and want_y.shape == args[0].shape
    for method, unroll, remat in VARIANTS:
        y, grads = run(*args, method=method, unroll=unroll, remat=remat)
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5, err_msg=method)
        for got, want in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=method)
    with pytest.raises(ValueError, match="assoc"):
        selective_scan(*args, method="parallel")


@functools.cache
def _tiny(scan):
    """The jitted tiny forward with `scan`, from the same parameters for both scans."""
    spec = archs.get("mamba")
    input_spec = spec.size("tiny").input
    variables = archs.init_variables(spec.build("tiny"), input_spec, jax.random.key(0))
    return jax.jit(functools.partial(spec.build("tiny", scan=scan).apply, variables))


def _tokens(seed=1, batch=2):
    vocab = archs.get("mamba").size("tiny").input.vocab_size
    return np.random.default_rng(seed).integers(0, vocab, (batch, 16), np.int32), vocab


def test_tiny_forwards_agree_across_scans():
    tokens, _ = _tokens()
    sequential, parallel = (np.asarray(_tiny(scan)(tokens)) for scan in SCANS)
    np.testing.assert_allclose(parallel, sequential, rtol=1e-5, atol=1e-5)


def silu(v):
    return v / (1 + np.exp(-v))


def _mixer_reference(p, u):
    """The mixer in float64 NumPy from its parameters, one time step at a time."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    batch, length, _ = u.shape
    xz = u @ p["in_proj"]["kernel"]  # (B, T, 2Di)
    inner = xz.shape[-1] // 2
    x, z = xz[..., :inner], xz[..., inner:]
    kernel = p["conv_kernel"]  # (K, Di): kernel[K-1] weighs the current step
    k, n = kernel.shape[0], p["A_log"].shape[1]
    rank = p["dt_proj"]["kernel"].shape[0]
    a = -np.exp(p["A_log"])  # (Di, N)
    h = np.zeros((batch, inner, n))
    out = []
    for t in range(length):
        conv = p["conv_bias"] + sum(
            kernel[j] * x[:, t - (k - 1) + j] for j in range(k) if t - (k - 1) + j >= 0
        )
        xc = silu(conv)  # (B, Di)
        dbc = xc @ p["x_proj"]["kernel"]  # (B, R + 2N)
        dt = np.logaddexp(0, dbc[:, :rank] @ p["dt_proj"]["kernel"] + p["dt_proj"]["bias"])
        b_t, c_t = dbc[:, rank : rank + n], dbc[:, rank + n :]
        # h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, for every channel d and state n
        h = np.exp(dt[:, :, None] * a) * h + (dt * xc)[:, :, None] * b_t[:, None, :]
        y = (h * c_t[:, None, :]).sum(-1) + p["D"] * xc  # (B, Di)
        out.append((y * silu(z[:, t])) @ p["out_proj"]["kernel"])
    return np.stack(out, axis=1)  # (B, T, D)


def test_mixer_matches_its_equations_step_by_step():
    rng = np.random.default_rng(3)
    u = rng.standard_normal((2, 11, 8), np.float32)
    module = MambaMixer(d_state=4)  # Di 16, R = ceil(8/16) = 1
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), u))["params"]  # plain arrays
    assert params["conv_kernel"].shape == (4, 16) and params["A_log"].shape == (16, 4)
    assert params["x_proj"]["kernel"].shape == (16, 1 + 2 * 4)
    # Move every parameter off its init (D = 1, A_log = log(1..N)) so each one is tested.
    params = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32), params)
    want = _mixer_reference(params, u.astype(np.float64))
    for scan in SCANS:
        got = jax.jit(MambaMixer(d_state=4, scan=scan).apply)({"params": params}, u)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=scan)


@pytest.mark.parametrize("scan", SCANS)
def test_mamba_is_causal(scan):
    tokens, vocab = _tokens()
    t = 5
    before = np.asarray(_tiny(scan)(tokens))
    changed_tokens = tokens.copy()
    changed_tokens[:, t] = (tokens[:, t] + 1) % vocab
    after = np.asarray(_tiny(scan)(changed_tokens))
    np.testing.assert_allclose(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    changed = np.abs(after[:, t:] - before[:, t:]).max(axis=-1)  # (B, T - t)
    assert np.all(changed > 1e-4 * np.abs(before).max()), changed


def _analytic_flops(size, batch, length):
    """(matmul, scan) FLOPs of a forward pass. matmul: 2 x the multiply-adds of the in, x, dt
    and out projections, the depthwise conv and the tied head; scan: the elementwise work per
    token, channel and state: Δ A, (Δ x) B, decay * h, + input, h * C, the sum over N."""
    c = archs.get("mamba").size(size).config
    width, layers, vocab = c["width"], c["num_layers"], c["vocab_size"]
    inner, n, rank, kernel = 2 * width, 16, math.ceil(width / 16), 4
    per_layer = width * 2 * inner + inner * (rank + 2 * n) + rank * inner + inner * width
    matmul = 2 * (layers * (per_layer + kernel * inner) + width * vocab)
    scan = layers * 6 * inner * n
    return batch * length * matmul, batch * length * scan


@functools.cache
def _infer(length):
    return measure.prepare(Cell("mamba", "small", "infer", 2, "float32", seq_len=length))


def test_forward_flops_count_every_scan_step_and_grow_linearly():
    counts = {}
    for length in (16, 32):
        prepared = _infer(length)
        assert prepared.facts["flops_source"] == "xla-unrolled"
        counts[length] = prepared.facts["flops_per_step"]
        matmul, scan = _analytic_flops("small", 2, length)
        # The rest (norms, SiLU, softplus, gating, residuals) is about 1.5% of the total.
        assert counts[length] == pytest.approx(matmul + scan, rel=0.03)
        assert counts[length] > matmul + scan
        rolled, _ = analysis.cost(prepared.compiled)  # XLA alone counts one scan step
        assert rolled < counts[length] - 0.5 * scan
    assert counts[32] == pytest.approx(2 * counts[16], rel=0.01)
