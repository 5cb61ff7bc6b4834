"""Numerics of the Transformer families: attention, causality, positions, dropout, counts."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs._transformer import MultiHeadAttention, sinusoidal_positions


def _naive_attention(params, x, context, num_heads, causal):
    """softmax(Q K^T / sqrt(d)) V in float64 NumPy with the module's own projections."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def project(name, inputs):
        y = np.einsum("bsd,dhk->bshk", inputs, p[name]["kernel"])
        return y + p[name]["bias"] if "bias" in p[name] else y

    q, k, v = project("query", x), project("key", context), project("value", context)
    logits = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if causal:
        t, s = logits.shape[-2:]
        logits = np.where(np.tril(np.ones((t, s), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhts,bshk->bthk", weights, v)  # (B, T, H, Dh)
    y = np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"])
    return y + p["out"]["bias"] if "bias" in p["out"] else y


@pytest.mark.parametrize(
    ("cross", "causal", "use_bias"),
    [(False, False, True), (False, True, True), (True, False, True), (False, True, False)],
    ids=["self", "causal", "cross", "causal-no-bias"],
)
def test_attention_matches_naive_softmax(cross, causal, use_bias):
    kx, kc, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 16))
    context = jax.random.normal(kc, (2, 7, 16)) if cross else None
    module = MultiHeadAttention(num_heads=4, use_bias=use_bias)
    params = nn.unbox(module.init(kp, x, context, causal=causal))["params"]  # no logical boxes
    if use_bias:  # the default init makes biases zero; give them values so they are tested
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        params = jax.tree.unflatten(
            tree,
            [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)],
        )
    got = module.apply({"params": params}, x, context, causal=causal)
    ctx = np.asarray(x if context is None else context, np.float64)
    want = _naive_attention(params, np.asarray(x, np.float64), ctx, 4, causal)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_sinusoidal_positions_follow_the_formula():
    length, width = 50, 24
    table = sinusoidal_positions(length, width)
    want = np.zeros((length, width))
    for pos in range(length):
        for i in range(width // 2):
            want[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / width))
            want[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / width))
    assert table.dtype == np.float32
    np.testing.assert_allclose(table, want, rtol=0, atol=1e-6)


def test_encdec_embeds_as_the_paper():
    """With no layers, the encoder output is embedding * sqrt(d_model) + PE (sec. 3.4, 3.5)."""
    spec = archs.get("transformer")
    module = spec.build("tiny", encoder_layers=0)
    variables = archs.init_variables(module, spec.size("tiny").input, jax.random.key(0))
    src = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    got = module.apply(variables, src, method="encode")
    table = np.asarray(variables["params"]["embed"]["embedding"])
    width = table.shape[1]
    want = table[np.asarray(src)] * math.sqrt(width) + sinusoidal_positions(16, width)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@functools.cache
def _tiny_apply(name):
    """The jitted eval-mode forward of `name`'s tiny size, with fixed parameters: one compile."""
    spec = archs.get(name)
    module = spec.build("tiny")
    variables = archs.init_variables(module, spec.size("tiny").input, jax.random.key(0))
    return jax.jit(functools.partial(module.apply, variables))


def _logits(name, x):
    return np.asarray(_tiny_apply(name)(x))


def _change_token(tokens, t, vocab):
    return tokens.at[:, t].set((tokens[:, t] + 1) % vocab)


def _assert_causal(before, after, t):
    np.testing.assert_allclose(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    changed = np.abs(after[:, t:] - before[:, t:]).max(axis=-1)  # (B, T - t)
    assert np.all(changed > 1e-4), changed


def test_gpt_is_causal():
    vocab, t = archs.get("gpt").size("tiny").input.vocab_size, 6
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, vocab)
    _assert_causal(_logits("gpt", tokens), _logits("gpt", _change_token(tokens, t, vocab)), t)


def test_encdec_decoder_is_causal_and_sees_all_of_the_source():
    vocab, t = archs.get("transformer").size("tiny").input.vocab_size, 9
    k_src, k_tgt = jax.random.split(jax.random.key(1))
    x = {
        "src": jax.random.randint(k_src, (2, 16), 0, vocab),
        "tgt": jax.random.randint(k_tgt, (2, 16), 0, vocab),
    }
    before = _logits("transformer", x)
    after = _logits("transformer", {**x, "tgt": _change_token(x["tgt"], t, vocab)})
    _assert_causal(before, after, t)
    # The encoder is bidirectional: its last token reaches every target position.
    after = _logits("transformer", {**x, "src": _change_token(x["src"], 15, vocab)})
    assert np.all(np.abs(after - before).max(axis=-1) > 1e-4)


def test_encoder_is_bidirectional():
    vocab = archs.get("encoder").size("tiny").input.vocab_size
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, vocab)
    before = _logits("encoder", tokens)
    after = _logits("encoder", _change_token(tokens, 15, vocab))  # pooled from token 0
    # Logits start small (BERT's 0.02 init), so compare with their scale: a position that is
    # not attended to would leave them bit-for-bit unchanged.
    assert np.all(np.abs(after - before).max(axis=-1) > 1e-4 * np.abs(before).max())


@pytest.mark.parametrize("name", ["encoder", "gpt", "transformer"])
def test_dropout_only_in_training(name):
    spec = archs.get(name)
    module = spec.build("tiny", dropout=0.5)
    input_spec = spec.size("tiny").input
    variables = archs.init_variables(module, input_spec, jax.random.key(0))
    x = input_spec.example(jax.random.key(1), 2)
    run = jax.jit(
        lambda key, train: module.apply(variables, x, train=train, rngs={"dropout": key}),
        static_argnums=1,
    )
    np.testing.assert_array_equal(run(jax.random.key(2), False), run(jax.random.key(3), False))
    assert not np.allclose(run(jax.random.key(2), True), run(jax.random.key(3), True))


def test_bf16_logits_track_f32():
    spec = archs.get("gpt")
    input_spec = spec.size("tiny").input
    variables = archs.init_variables(spec.build("tiny"), input_spec, jax.random.key(0))
    x = input_spec.example(jax.random.key(1), 2)
    f32 = _tiny_apply("gpt")(x)
    bf16 = jax.jit(spec.build("tiny", dtype=jnp.bfloat16).apply)(variables, x)
    np.testing.assert_allclose(np.asarray(bf16, np.float32), f32, atol=0.05)


def test_canonical_parameter_counts():
    assert archs.param_count("gpt", "base") == 124_439_808  # GPT-2 small
    assert archs.param_count("transformer", "base") == 63_045_632  # Table 3 says 65M
    spec = archs.get("encoder")
    module = spec.build("base")
    shapes = jax.eval_shape(
        lambda k: archs.init_variables(module, spec.size("base").input, k), jax.random.key(0)
    )["params"]
    head = archs.count_params(shapes["classifier"])
    assert head == 768 * 2 + 2
    assert archs.count_params(shapes) - head == 109_482_240  # BertModel with pooler
