"""Attention implementation variants of the Transformer families (`--variant xla,cudnn,einsum`).

Every variant is the same function of the same parameters: the default (JAX's choice), XLA's
and the hand-written einsum path give the same outputs, gradients, generated tokens and
FLOPs; cuDNN's, off an NVIDIA GPU, is a cell with status "unsupported", not a failure.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs._transformer import ATTENTION_IMPLS, attention, einsum_attention
from archbench.archs.moe import DISPATCH_VARIANTS
from archbench.cli.main import main
from archbench.engine import generate
from archbench.engine.cell import Cell, build

TRANSFORMERS = ["gpt", "encoder", "transformer", "llama", "moe", "vit"]
SAME = [None, "xla", "einsum"]  # every variant this backend runs; cudnn needs a GPU
ON_GPU = jax.default_backend() == "gpu"


def _random_params(shapes, seed=1):
    """Float32 parameters of a tree of shapes, drawn in NumPy: norm scales 1 + N(0, 0.1^2),
    everything else N(0, 0.1^2). Not the models' initialisers: ViT's zero head would make
    outputs zero, and zero biases hide a bias that is read wrongly."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        shift = 1.0 if getattr(path[-1], "key", None) == "scale" else 0.0
        return (shift + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_every_transformer_family_declares_the_attention_variants():
    attention_families = {
        n for n in archs.names() if "attention_impl" in archs.get(n).module.__dataclass_fields__
    }
    assert attention_families >= set(TRANSFORMERS)
    for name in attention_families:
        others = set(DISPATCH_VARIANTS) if name == "moe" else set()  # and its dispatches
        assert set(archs.get(name).variants) == set(ATTENTION_IMPLS) | others, name
        assert build(Cell(name, "tiny", "infer", 2, "float32")).attention_impl is None
        einsum = Cell(name, "tiny", "infer", 2, "float32", variant="einsum")
        assert build(einsum).attention_impl == "einsum"


# Both attention code paths and every mask kind: causal self-attention (gpt's
# MultiHeadAttention), non-causal and cross attention (the encoder-decoder's), grouped-query
# heads (Llama's, which MoE inherits); encoder and ViT call gpt's attention without a mask.
@pytest.mark.parametrize("arch", ["gpt", "transformer", "llama"])
def test_variants_compute_the_same_outputs_and_gradients(arch):
    spec = archs.get(arch)
    inputs = spec.size("tiny").input
    x = inputs.example(jax.random.key(2), 2)
    one_layer = {"num_layers": 1} if "num_layers" in spec.size("tiny").config else {}
    modules = [spec.build("tiny", **spec.variant(v), **one_layer) for v in SAME]
    trees = [
        jax.eval_shape(lambda k, m=m: archs.init_variables(m, inputs, k), jax.random.key(0))
        for m in modules
    ]
    assert all(t == trees[0] for t in trees)  # the same parameters (paths, shapes, dtypes)
    params = _random_params(trees[0]["params"])

    @jax.jit
    def all_variants(params, x):  # one compile for the three
        def loss(params, module):
            out = module.apply({"params": params}, x)
            weights = jnp.sin(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
            return jnp.sum(out * weights), out

        return [jax.value_and_grad(loss, has_aux=True)(params, m) for m in modules]

    (ref_loss, ref_out), ref_grads = all_variants(params, x)[0]
    assert float(jnp.abs(ref_out).max()) > 1e-2  # not trivially zero
    for variant, ((loss, out), grads) in zip(SAME[1:], all_variants(params, x)[1:], strict=True):
        np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5, err_msg=variant)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5, err_msg=variant)
        jax.tree.map(
            lambda a, b, v=variant: np.testing.assert_allclose(
                a, b, rtol=1e-4, atol=1e-5, err_msg=v
            ),
            grads,
            ref_grads,
        )


def test_einsum_attention_masks_groups_and_heads_like_jax():
    """Grouped-query heads (6 query heads over 2 key/value heads), a causal mask combined with
    a per-head mask (T < S) and a mask shared by the heads, against jax's XLA attention."""
    kq, kk, kv, km = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (2, 3, 6, 8))  # (B, T, H, Dh)
    k = jax.random.normal(kk, (2, 5, 2, 8))  # (B, S, K, Dh)
    v = jax.random.normal(kv, (2, 5, 2, 8))
    per_head = jax.random.bernoulli(km, 0.7, (2, 6, 3, 5)).at[..., 0].set(True)
    shared = jnp.arange(5)[None, None, None, :] <= jnp.arange(3)[None, None, :, None] + 2

    @jax.jit
    def both(q, k, v, per_head, shared):  # one compile for every case
        cases = ((per_head, True), (per_head, False), (shared, False), (None, True))
        return [
            (
                jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal),
                einsum_attention(q, k, v, mask=mask, causal=causal),
            )
            for mask, causal in cases
        ]

    for want, got in both(q, k, v, per_head, shared):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        attention(q, k, v, implementation="flash")


@pytest.mark.skipif(ON_GPU, reason="checks the refusal off a GPU")
def test_cudnn_off_a_gpu_is_unsupported_at_trace_time():
    module = archs.get("gpt").build("tiny", attention_impl="cudnn")
    tokens = jnp.zeros((1, 16), jnp.int32)
    with pytest.raises(archs.Unsupported, match="cudnn attention needs an NVIDIA GPU; this"):
        jax.eval_shape(module.init, jax.random.key(0), tokens)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_generation_gives_the_same_tokens_with_each_variant(arch):
    """--mode generate's programs (the engine's greedy prefill, then decode steps with the
    key/value cache; llama's heads grouped) give the same tokens with einsum as the default."""
    batch, prompt, gen = 2, 6, 6
    cells = {
        v: Cell(
            arch, "tiny", "generate", batch, "float32", prompt_len=prompt, gen_len=gen, variant=v
        )
        for v in (None, "einsum")
    }
    modules = {v: build(cell) for v, cell in cells.items()}
    cache = generate.cache_shapes(modules[None], batch, prompt + gen)
    assert generate.cache_shapes(modules["einsum"], batch, prompt + gen) == cache
    tokens = jax.random.randint(jax.random.key(3), (batch, prompt), 0, 128)
    shapes = nn.unbox(jax.eval_shape(modules[None].init, jax.random.key(0), tokens))["params"]

    @jax.jit
    def generations(params, prompt):  # one compile for both variants
        out = {}
        for v, module in modules.items():
            first, state = generate.greedy_forward(
                module, params, generate.empty_cache(cache), prompt
            )

            def step(carry, _, module=module):
                token, state = generate.greedy_step(module, params, carry[1], carry[0])
                return (token, state), token

            _, rest = jax.lax.scan(step, (first, state), None, length=gen)  # (G, B)
            out[v or "default"] = jnp.concatenate([first[:, None], rest.T], axis=1)  # (B, 1 + G)
        return out

    out = generations(_random_params(shapes), tokens)
    np.testing.assert_array_equal(out["einsum"], out["default"])
    assert out["default"].shape == (batch, 1 + gen) and len(np.unique(out["default"])) > 2


@pytest.mark.skipif(ON_GPU, reason="cudnn runs on a GPU")
def test_run_records_each_variant_and_cudnn_unsupported(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["run", "--arch", "gpt,encoder", "--size", "tiny", "--mode", "infer", "--batch", "4"]
    assert (
        main([*argv, "--variant", "xla,einsum,cudnn", "--target-s", "0.1", "--out", str(out)]) == 0
    )
    rows = [r["extra_info"] for r in json.loads(out.read_text())["benchmarks"]]
    by_cell = {(r["arch"], r["variant"]): r for r in rows}
    assert sorted(by_cell) == [
        (a, v) for a in ("encoder", "gpt") for v in ("cudnn", "einsum", "xla")
    ]
    for (arch, variant), r in by_cell.items():
        if variant == "cudnn":
            assert r["status"] == "unsupported"
            assert r["error"] == (
                "Unsupported: cudnn attention needs an NVIDIA GPU; this backend is cpu"
            )
        else:
            assert r["status"] == "ok", r["error"]
            xla = by_cell[(arch, "xla")]
            assert r["params"] == xla["params"]
            assert r["flops_per_step"] == pytest.approx(xla["flops_per_step"], rel=0.03)
    assert "2 unsupported" in capsys.readouterr().err
    assert main(["report", str(out), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].split().index("variant")
    shown = {(line.split()[0], line.split()[column]) for line in lines[2:] if line.strip()}
    assert shown >= {(a, v) for a in ("gpt", "encoder") for v in ("xla", "einsum", "cudnn")}
    # compile-only and generate record cudnn as unsupported too, and exit 0
    for more in (
        ["--compile-only", "--mode", "train,infer"],
        ["--mode", "generate", "--prompt-len", "4", "--gen-len", "2"],
    ):
        other = tmp_path / f"{more[0].strip('-')}.json"
        argv = ["run", "--arch", "gpt", "--size", "tiny", "--batch", "2", "--variant", "cudnn"]
        assert main([*argv, *more, "--target-s", "0.1", "--out", str(other)]) == 0
        rows = [r["extra_info"] for r in json.loads(other.read_text())["benchmarks"]]
        assert rows and {r["status"] for r in rows} == {"unsupported"}, rows
        assert all("NVIDIA GPU" in r["error"] for r in rows)
