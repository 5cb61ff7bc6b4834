"""Numerics of the vision families (ViT, MLP-Mixer): each against a hand-written NumPy forward
in float64 from the module's own parameters, plus their canonical shapes."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from archbench import archs
from archbench.archs.mixer import MixerLayer
from archbench.archs.vit import ViT

EPS = 1e-6  # both families' LayerNorm epsilon


def _perturbed(params, seed=1):
    """Every parameter plus N(0, 0.1) noise: zero heads, class token and biases, and unit
    LayerNorm scales, would hide a missing or misplaced term. NumPy's generator: jax.random
    would compile a kernel per parameter shape."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + np.float32(0.1) * _normal(rng, a.shape), params)


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _ln(x, p):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def _gelu(x):  # the tanh approximation, flax's nn.gelu
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _mlp(x, p):
    return _dense(_gelu(_dense(x, p["fc"])), p["proj"])


def _embed(x, conv, patch):
    """Cut (B, H, W, C) into row-major patches, flatten each (row, column, channel) as the
    conv kernel's (kh, kw, c_in) axes are, and multiply: (B, N, D)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // patch) * (w // patch), patch * patch * c)  # (B, N, P*P*C)
    return x @ conv["kernel"].reshape(-1, conv["kernel"].shape[-1]) + conv["bias"]


def _attention(x, p):
    """softmax(Q K^T / sqrt(d)) V per head, then the output projection."""
    q, k, v = (
        np.einsum("btd,dhk->bthk", x, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhts,bshk->bthk", weights, v)
    return np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def _vit_reference(p, x, config):
    h = _embed(x, p["patch_embed"], config["patch_size"])  # (B, N, D)
    cls = np.broadcast_to(p["cls_token"], (h.shape[0], 1, h.shape[2]))
    h = np.concatenate([cls, h], axis=1) + p["pos_embed"]["embedding"]  # (B, N + 1, D)
    for i in range(config["num_layers"]):
        block = p[f"block_{i}"]
        h = h + _attention(_ln(h, block["ln_self_attn"]), block["self_attn"])
        h = h + _mlp(_ln(h, block["ln_mlp"]), block["mlp"])
    return _dense(_ln(h, p["ln_final"])[:, 0], p["head"])  # the class token's logits


def _mixer_layer(x, p):
    """Eq. 1 of the paper written out: an MLP down each channel's column of patches, then
    an MLP along each patch's row of channels."""
    y = _ln(x, p["ln_token"])
    u = x.copy()
    for i in range(x.shape[2]):  # token mixing: channel i's S values through the MLP
        u[:, :, i] += _mlp(y[:, :, i], p["token_mixing"])
    y = _ln(u, p["ln_channel"])
    out = u.copy()
    for j in range(x.shape[1]):  # channel mixing: patch j's C values through the MLP
        out[:, j, :] += _mlp(y[:, j, :], p["channel_mixing"])
    return out


def _mixer_reference(p, x, config):
    h = _embed(x, p["stem"], config["patch_size"])  # (B, S, C)
    for i in range(config["num_layers"]):
        h = _mixer_layer(h, p[f"layer_{i}"])
    return _dense(_ln(h, p["ln_final"]).mean(axis=1), p["head"])  # average over patches


def test_vit_patch_embedding_is_a_matmul_over_patches():
    module = ViT(patch_size=4, num_layers=0, width=8, num_heads=2, mlp_dim=16, num_classes=3)
    x = _normal(np.random.default_rng(0), (2, 8, 12, 3))  # 2x3 patches, not square
    params = _perturbed(nn.unbox(jax.jit(module.init)(jax.random.key(0), x))["params"])
    apply = functools.partial(
        module.apply,
        capture_intermediates=lambda mdl, _: mdl.name == "patch_embed",
        mutable=["intermediates"],
    )
    _, state = jax.jit(apply)({"params": params}, x)
    got = np.asarray(state["intermediates"]["patch_embed"]["__call__"][0])  # (B, 2, 3, D)
    want = _embed(np.asarray(x, np.float64), _f64(params)["patch_embed"], 4)  # (B, 6, D)
    np.testing.assert_allclose(got.reshape(2, 6, 8), want, rtol=1e-5, atol=1e-5)
    assert params["pos_embed"]["embedding"].shape == (6 + 1, 8)  # the class token's too
    with pytest.raises(ValueError, match="not divisible"):
        module.init(jax.random.key(0), x[:, :6])


def test_mixer_layer_follows_eq_1():
    module = MixerLayer(tokens_mlp_dim=4, channels_mlp_dim=12)
    x = _normal(np.random.default_rng(0), (2, 6, 5))  # 6 patches of 5 channels
    params = _perturbed(nn.unbox(jax.jit(module.init)(jax.random.key(0), x))["params"])
    # Token mixing maps the 6 patches to D_S = 4 and back; channel mixing 5 channels to 12.
    assert params["token_mixing"]["fc"]["kernel"].shape == (6, 4)
    assert params["channel_mixing"]["fc"]["kernel"].shape == (5, 12)
    got = jax.jit(module.apply)({"params": params}, x)
    want = _mixer_layer(np.asarray(x, np.float64), _f64(params))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@functools.cache
def _tiny_params(name):
    """The tiny size's initial parameters, initialised once for this file."""
    spec = archs.get(name)
    module, input_spec = spec.build("tiny"), spec.size("tiny").input
    return archs.init_variables(module, input_spec, jax.random.key(0))["params"]


@pytest.mark.parametrize(
    ("name", "reference"), [("vit", _vit_reference), ("mixer", _mixer_reference)]
)
def test_tiny_forward_matches_reference(name, reference):
    spec = archs.get(name)
    module, input_spec = spec.build("tiny"), spec.size("tiny").input
    assert not np.any(_tiny_params(name)["head"]["kernel"])  # zero, as the released models
    params = _perturbed(_tiny_params(name))
    x = _normal(np.random.default_rng(2), (3, *input_spec.shape))
    got = jax.jit(module.apply)({"params": params}, x)
    want = reference(_f64(params), np.asarray(x, np.float64), spec.size("tiny").config)
    assert np.abs(want).max() > 0.1  # logits of a useful size, not near zero
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_vit_dropout_only_in_training():
    spec = archs.get("vit")
    module = spec.build("tiny", dropout=0.5)
    variables = {"params": _perturbed(_tiny_params("vit"))}  # a zero head would hide dropout
    x = _normal(np.random.default_rng(1), (2, *spec.size("tiny").input.shape))
    run = jax.jit(
        lambda key, train: module.apply(variables, x, train=train, rngs={"dropout": key}),
        static_argnums=1,
    )
    np.testing.assert_array_equal(run(jax.random.key(2), False), run(jax.random.key(3), False))
    assert not np.allclose(run(jax.random.key(2), True), run(jax.random.key(3), True))


def _param_shapes(name, size):
    spec = archs.get(name)
    module = spec.build(size)
    return jax.eval_shape(
        lambda k: archs.init_variables(module, spec.size(size).input, k), jax.random.key(0)
    )["params"]


def test_canonical_sizes_have_the_papers_shapes():
    vit = _param_shapes("vit", "B/16")
    assert vit["patch_embed"]["kernel"].shape == (16, 16, 3, 768)
    assert vit["pos_embed"]["embedding"].shape == (14 * 14 + 1, 768)  # patches + class token
    assert vit["block_11"]["mlp"]["fc"]["kernel"].shape == (768, 3072)
    assert vit["block_0"]["self_attn"]["query"]["kernel"].shape == (768, 12, 64)
    assert vit["head"]["kernel"].shape == (768, 1000)
    mixer = _param_shapes("mixer", "B/16")
    assert mixer["stem"]["kernel"].shape == (16, 16, 3, 768)
    assert mixer["layer_11"]["token_mixing"]["fc"]["kernel"].shape == (196, 384)
    assert mixer["layer_11"]["channel_mixing"]["fc"]["kernel"].shape == (768, 3072)
    assert mixer["head"]["kernel"].shape == (768, 1000)
