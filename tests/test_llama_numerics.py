"""Numerics of the Llama family against hand-written float64 NumPy references.

Each reference reads the module's own parameters and never calls the module: RMSNorm, RoPE
(written as explicit 2x2 rotations), grouped-query attention with RoPE and the causal mask,
SwiGLU, a whole tiny forward, causality and the parameter counts of every size.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs.llama import GroupedQueryAttention, RMSNorm, SwiGLU, apply_rope, rope_tables


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _params(module, *inputs, std=0.02, seed=1):
    """Random float32 parameters of `module`'s own tree and shapes, drawn in NumPy (no init
    compile): matrices N(0, std^2), RMSNorm scales 1 + N(0, 0.2^2) so that they are tested."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        if len(s.shape) == 1:  # an RMSNorm scale
            return (1 + 0.2 * rng.standard_normal(s.shape)).astype(np.float32)
        return (std * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree.map(draw, shapes)


def _rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope(x, base):
    """x (B, T, H, d): rotate (x[i], x[i + d/2]) at position p by p * base^(-2i/d), one by one."""
    out = np.empty_like(x)
    d = x.shape[-1]
    half = d // 2
    for p in range(x.shape[1]):
        for i in range(half):
            c, s = math.cos(p * base ** (-2 * i / d)), math.sin(p * base ** (-2 * i / d))
            a, b = x[:, p, :, i], x[:, p, :, i + half]
            out[:, p, :, i], out[:, p, :, i + half] = c * a - s * b, s * a + c * b
    return out


def _attention(p, x, num_heads, num_kv_heads, base):
    """Causal softmax attention; each key/value head repeated for its group of query heads."""
    q, k, v = (np.einsum("btd,dhk->bthk", x, p[n]["kernel"]) for n in ("query", "key", "value"))
    q, k = _rope(q, base), _rope(k, base)
    group = num_heads // num_kv_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # heads 0..g-1 -> kv 0
    logits = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    t = logits.shape[-1]
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhts,bshk->bthk", weights, v)
    return np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"])


def _swiglu(p, x):
    gate = x @ p["w1"]["kernel"]
    return (gate / (1 + np.exp(-gate)) * (x @ p["w3"]["kernel"])) @ p["w2"]["kernel"]


def _forward(p, tokens, c):
    h = p["token_embed"]["embedding"][tokens]
    for i in range(c["num_layers"]):
        b = p[f"block_{i}"]
        a = _rms_norm(h, b["attention_norm"]["scale"], c["norm_eps"])
        h = h + _attention(b["attention"], a, c["num_heads"], c["num_kv_heads"], c["rope_base"])
        h = h + _swiglu(b["mlp"], _rms_norm(h, b["mlp_norm"]["scale"], c["norm_eps"]))
    return _rms_norm(h, p["norm_final"]["scale"], c["norm_eps"]) @ p["output"]["kernel"]


def test_rms_norm_matches_the_formula():
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 16)) + 1.0
    module = RMSNorm(eps=1e-5)
    params = _params(module, x)
    want = _rms_norm(np.asarray(x, np.float64), _f64(params)["scale"], 1e-5)
    got = jax.jit(module.apply)({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # bf16 compute: bf16 out, statistics in float32, so within bf16 rounding of the reference.
    bf16 = RMSNorm(eps=1e-5, dtype=jnp.bfloat16)
    got = jax.jit(bf16.apply)({"params": params}, x.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=2e-2)


def test_rope_rotates_pairs_by_position():
    x = jax.random.normal(jax.random.key(0), (2, 12, 3, 8))
    cos, sin = rope_tables(12, 8, 10_000.0)
    got = apply_rope(x, cos, sin)
    np.testing.assert_allclose(got, _rope(np.asarray(x, np.float64), 10_000.0), atol=1e-5)
    # A rotation keeps each head's length; position 0 is not rotated at all.
    norm = functools.partial(jnp.linalg.norm, axis=-1)
    np.testing.assert_allclose(norm(got), norm(x), rtol=1e-5)
    np.testing.assert_array_equal(got[:, 0], x[:, 0])
    assert apply_rope(x.astype(jnp.bfloat16), cos, sin).dtype == jnp.bfloat16


@pytest.mark.parametrize("base", [10_000.0, 500_000.0])
def test_rope_scores_depend_only_on_the_offset(base):
    """<R_m q, R_n k> = <R_(m-n) q, k>: the same q and k at every position score by m - n."""
    length, head_dim = 40, 16
    cos, sin = rope_tables(length, head_dim, base)
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, head_dim))
    q, k = (apply_rope(jnp.broadcast_to(a, (1, length, 1, head_dim)), cos, sin) for a in (q, k))
    scores = np.asarray(jnp.einsum("mk,nk->mn", q[0, :, 0], k[0, :, 0]), np.float64)  # (T, T)
    m, n = np.indices(scores.shape)
    for offset in range(-length + 1, length):
        diagonal = scores[m - n == offset]
        np.testing.assert_allclose(diagonal, diagonal[0], atol=1e-4)
    assert np.ptp(np.diag(scores, 1)) < 1e-4 < abs(scores[0, 1] - scores[0, 5])  # not constant


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4], ids=["mqa", "gqa", "mha"])
def test_attention_matches_a_repeated_kv_reference(num_kv_heads):
    x = jax.random.normal(jax.random.key(0), (2, 9, 32))
    module = GroupedQueryAttention(4, num_kv_heads, max_len=16, rope_base=100.0)
    params = _params(module, x, std=0.2)  # logits far from uniform
    got = jax.jit(module.apply)({"params": params}, x)
    want = _attention(_f64(params), np.asarray(x, np.float64), 4, num_kv_heads, 100.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_rejects_more_positions_than_its_tables():
    module = GroupedQueryAttention(num_heads=4, num_kv_heads=2, max_len=8)
    with pytest.raises(ValueError, match="exceeds the 8 positions"):
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 9, 32)))


def test_swiglu_matches_the_formula():
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    module = SwiGLU(hidden=24)
    params = _params(module, x, std=1.0)  # silu's curve, not only its slope at 0
    want = _swiglu(_f64(params), np.asarray(x, np.float64))
    got = jax.jit(module.apply)({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@functools.cache
def _tiny():
    """Tiny Llama's config, parameters and jitted forward: one compile."""
    spec = archs.get("llama")
    module = spec.build("tiny")
    params = _params(module, jnp.zeros((1, 16), jnp.int32), std=0.1)
    apply = jax.jit(lambda x: module.apply({"params": params}, x))
    return dict(spec.size("tiny").config), params, apply


def test_tiny_forward_matches_a_hand_written_forward():
    config, params, apply = _tiny()
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, config["vocab_size"])
    want = _forward(_f64(params), np.asarray(tokens), config)
    got = apply(tokens)
    assert got.shape == (2, 16, config["vocab_size"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_llama_is_causal():
    config, _, apply = _tiny()
    vocab, t = config["vocab_size"], 6
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, vocab)
    before = np.asarray(apply(tokens))
    after = np.asarray(apply(tokens.at[:, t].set((tokens[:, t] + 1) % vocab)))
    np.testing.assert_allclose(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert np.all(np.abs(after[:, t:] - before[:, t:]).max(axis=-1) > 1e-4)


def _derived_count(c):
    """2 V D + L (2 D^2 + 2 D K Dh + 3 D F + 2 D) + D: the derivation in archs/llama.py."""
    v, d, f, layers = c["vocab_size"], c["width"], c["mlp_dim"], c["num_layers"]
    kv_width = c["num_kv_heads"] * d // c["num_heads"]
    return 2 * v * d + layers * (2 * d * d + 2 * d * kv_width + 3 * d * f + 2 * d) + d


def test_parameter_counts_follow_the_derivation():
    spec = archs.get("llama")
    for size in ("tiny", "small", "100m"):
        assert archs.param_count("llama", size) == _derived_count(spec.size(size).config), size
    assert _derived_count(spec.size("7b").config) == 6_738_415_616  # Llama-2-7B, released
    assert _derived_count(spec.size("8b").config) == 8_030_261_248  # Llama-3-8B, released
