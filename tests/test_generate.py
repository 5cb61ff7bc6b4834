"""Generation (mode "generate"): cached decoding against the full forward pass, the generate
cell (API, CLI, report) and its validation.

The decode paths (a key/value cache for the Transformers, the recurrent state for Mamba) are
checked against the same model's full forward pass over the same tokens, whose numerics the
family tests check against hand-written NumPy references.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archbench
from archbench import archs
from archbench.cli.main import main
from archbench.engine import generate, peaks
from archbench.engine.cell import Cell, from_id
from archbench.engine.outcome import GENERATE_KEYS, RESULT_KEYS
from archbench.matrix import cells, results

MOE_PENDING = "moe" not in archs.names()  # the Mixture-of-Experts family, a Llama, when present
DECODERS = [
    "gpt",
    "llama",
    *(
        pytest.param(arch, marks=pytest.mark.skipif(MOE_PENDING, reason="moe is not registered"))
        # the default dispatch, dropless, and the others: a prefill of 10 tokens and decoding
        # steps of 2 route the same tokens to the same experts as the full pass of 18
        for arch in ("moe", "moe:ragged", "moe:dense", "moe:capacity")
    ),
    "mamba",
]


def _params(module, tokens, seed=1):
    """Random float32 parameters of `module`'s tree, drawn in NumPy (no init to compile):
    matrices N(0, 0.05^2), vectors (norm scales, biases) 1 + N(0, 0.1^2)."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), tokens))["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        scale, shift = (0.1, 1.0) if len(s.shape) == 1 else (0.05, 0.0)
        return (shift + scale * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree.map(draw, shapes)


@pytest.mark.parametrize("arch", DECODERS)
def test_cached_decoding_matches_the_full_forward_pass(arch):
    """Prefill P tokens, decode G one at a time: every position's logits are the full pass's."""
    arch, _, variant = arch.partition(":")
    config = archs.get(arch).size("tiny").config
    overrides = dict(archs.get(arch).variant(variant or None))
    if arch in ("llama", "moe"):
        assert config["num_kv_heads"] < config["num_heads"]  # grouped-query attention
    if variant == "capacity":  # as many slots as tokens, or a call's own batch-mates would
        overrides["capacity_factor"] = config["num_experts"] / config["top_k"]  # change it
    module = archs.get(arch).build("tiny", **overrides)
    batch, prompt, gen = 2, 5, 4
    tokens = jax.random.randint(jax.random.key(3), (batch, prompt + gen), 0, config["vocab_size"])
    params = _params(module, tokens)
    shapes = generate.cache_shapes(module, batch, prompt + gen)

    @jax.jit
    def both(params, tokens):  # one compile: the cached decode and the full pass
        def apply(cache, x):
            variables = {"params": params, "cache": cache}
            out, new = module.apply(variables, x, decode=True, mutable=["cache"])
            return out, new["cache"]

        def step(cache, t):  # position t (traced), one token
            logits, cache = apply(cache, jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1))
            return cache, logits[:, 0]

        logits, cache = apply(generate.empty_cache(shapes), tokens[:, :prompt])
        _, steps = jax.lax.scan(step, cache, jnp.arange(prompt, prompt + gen))  # (G, B, V)
        cached = jnp.concatenate([logits, jnp.swapaxes(steps, 0, 1)], axis=1)
        return cached, module.apply({"params": params}, tokens)

    cached, full = both(params, tokens)  # (B, P+G, V) each
    assert cached.shape == full.shape == (batch, prompt + gen, config["vocab_size"])
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(full[:, prompt:]).max()) > 1e-2  # not trivially zero


@pytest.mark.parametrize(
    "arch", ["gpt", pytest.param("moe", marks=pytest.mark.skipif(MOE_PENDING, reason="no moe"))]
)
def test_greedy_generation_is_the_argmax_of_full_passes(arch):
    """The engine's generated tokens: at each step, the argmax of a full forward pass over the
    prompt and the tokens generated so far (re-run token by token, without a cache). For moe,
    its default dispatch: dropless, so the full pass's extra tokens change no expert's work."""
    cell = Cell(arch, "tiny", "generate", 2, "float32", prompt_len=6, gen_len=5)
    gen = generate.prepare(cell)
    gen.run_round(record=False)
    module = archs.get(arch).build("tiny")
    full = jax.jit(lambda params, x: module.apply({"params": params}, x))  # (B, T, V)
    length = cell.prompt_len + cell.gen_len  # the longest sequence a token is predicted from
    seq = np.zeros((cell.batch, length), np.int32)  # causal: what follows a position is moot
    seq[:, : cell.prompt_len] = np.asarray(gen.prompt)
    expected = []
    for i in range(1 + cell.gen_len):  # the prefill's token, then one per decode step
        last = cell.prompt_len + i - 1  # the position that predicts the next token
        token = np.asarray(jnp.argmax(full(gen.params, seq)[:, last], axis=-1))
        expected.append(token)
        if last + 1 < length:
            seq[:, last + 1] = token
    np.testing.assert_array_equal(np.asarray(gen.tokens), np.stack(expected, axis=1))
    assert gen.prefill_times == [] and gen.step_times == []  # an untimed generation


def test_generate_cell_through_the_api():
    batch, prompt, gen = 2, 8, 4
    r = archbench.measure(
        "llama", "tiny", mode="generate", batch=batch, prompt_len=prompt, gen_len=gen, target_s=0.05
    )
    assert r["status"] == "ok", r["error"]
    assert tuple(r) == RESULT_KEYS
    assert r["cell_id"] == "llama-tiny-generate-b2-float32-d1-p8-g4"
    expected = Cell("llama", "tiny", "generate", 2, "float32", prompt_len=8, gen_len=4)
    assert from_id(r["cell_id"]) == expected
    assert (r["prompt_len"], r["gen_len"], r["mode"]) == (prompt, gen, "generate")
    assert r["prefill_s"] > 0 and r["decode_token_s"] > 0 and r["decode_token_iqr_s"] >= 0
    assert r["decode_tokens_per_s"] == pytest.approx(batch / r["decode_token_s"])
    assert r["tokens_per_s"] == r["decode_tokens_per_s"]
    assert r["rounds"] >= generate.MIN_ROUNDS and r["steps_per_round"] == gen
    c = archs.get("llama").size("tiny").config
    head_dim = c["width"] // c["num_heads"]
    # keys and values, every layer, every position of prompt and generation, float32
    analytic = 2 * c["num_layers"] * batch * (prompt + gen) * c["num_kv_heads"] * head_dim * 4
    assert r["cache_bytes"] == analytic
    assert r["flops_per_token"] > 0 and r["bytes_per_token"] > r["cache_bytes"]
    assert r["bandwidth_bytes_per_s"] == pytest.approx(r["bytes_per_token"] / r["decode_token_s"])
    fraction = r["bandwidth_bytes_per_s"] / r["peak_bandwidth_bytes_per_s"]
    assert r["bandwidth_fraction"] == pytest.approx(fraction)
    assert r["bandwidth_source"] in ("datasheet", "measured-copy") and r["bandwidth_basis"]
    # the decode step's roofline: one device, no collectives, against its median time
    bound = r["bytes_per_token"] / r["peak_bandwidth_bytes_per_s"]
    assert r["memory_bound_s"] == pytest.approx(bound) and r["comm_bound_s"] == 0
    assert r["roofline_bound_s"] == max(r["compute_bound_s"], r["memory_bound_s"])
    assert r["roofline_efficiency"] == pytest.approx(r["roofline_bound_s"] / r["step_time_s"])
    assert r["compile_s"] >= r["prefill_compile_s"] + r["decode_compile_s"] - 1e-9


def test_generate_cli_run_and_report(tmp_path, capsys):
    out, html = tmp_path / "gen.json", tmp_path / "gen.html"
    argv = ["run", "--arch", "llama", "--size", "tiny", "--mode", "generate"]
    argv += ["--prompt-len", "4,8", "--gen-len", "4", "--target-s", "0.05", "--out", str(out)]
    assert main(argv) == 0
    rows = {r["prompt_len"]: r for r in results.flat_rows([out])}
    assert rows[8]["cell_id"] == "llama-tiny-generate-b32-float32-d1-p8-g4" and len(rows) == 2
    for row in rows.values():
        assert row["status"] == "ok" and row["prefill_s"] > 0 and row["cache_bytes"] > 0
    for bench in results.load_results(out)["benchmarks"]:  # whole generations, timed: resumable
        assert results.is_ok(bench) and bench["stats"]["rounds"] >= generate.MIN_ROUNDS
    assert main(["report", str(out), "-o", str(html)]) == 0
    text = html.read_text()
    assert "Generation" in text and "TTFT" in text and "tokens/s" in text
    # two prompt lengths: a plot against the prompt length; one batch: none against the batch
    assert "Generation vs prompt length" in text and "data:image/svg+xml" in text
    assert "two or more prompt lengths" not in text and "two or more batch sizes" in text
    assert "train" not in {r["mode"] for r in results.flat_rows([out])}
    capsys.readouterr()


def test_generate_is_refused_in_one_line_where_it_does_not_apply(tmp_path, capsys):
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "generate", "--out"]
    assert main([*argv, str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generate" in err and "llama" in err
    assert not (tmp_path / "r.json").exists()
    bad = [
        dict(arch="mlp", size="tiny", mode="generate", prompt_len=4, gen_len=2),  # classifier
        dict(arch="gpt", size="tiny", mode="generate", prompt_len=12, gen_len=8),  # > 16 positions
        dict(arch="gpt", size="tiny", mode="generate"),  # no lengths
        dict(arch="gpt", size="tiny", mode="infer", prompt_len=4, gen_len=2),  # not generate
        dict(arch="gpt", size="tiny", mode="generate", batch="auto", prompt_len=4, gen_len=2),
    ]
    for kw in bad:
        with pytest.raises(archbench.UserError) as e:
            archbench.measure(**kw)
        assert "\n" not in str(e.value)
    with pytest.raises(archbench.UserError, match="--mode generate"):
        cells.select(arch="gpt", size="tiny", mode="train", prompt_len="8")


def test_selection_of_generate_cells():
    default = [r for r in cells.select() if r.mode == "generate"]
    expected = {"gpt", "llama", "mamba"} | (set() if MOE_PENDING else {"moe"})
    assert {r.arch for r in default} == expected
    assert {r.id.split("-", 3)[3] for r in default} == {"b32-float32-d1-p64-g32"}
    mixed = cells.select(
        arch="gpt,mlp", size="tiny", mode="infer,generate", prompt_len="4,8", gen_len="4"
    )
    ids = [r.id for r in mixed]
    assert (
        "gpt-tiny-generate-b32-float32-d1-p4-g4" in ids and "mlp-tiny-infer-b32-float32-d1" in ids
    )
    assert not any(i.startswith("mlp-tiny-generate") for i in ids) and len(ids) == 4
    # the defaults (64 + 32) do not fit tiny GPT's 16 positions: left out, not an error
    tiny = cells.select(arch="gpt,mamba", size="tiny")
    assert [r.id for r in tiny if r.mode == "generate"] == [
        "mamba-tiny-generate-b32-float32-d1-p64-g32"
    ]


def test_result_keys_and_bandwidth_table():
    assert set(GENERATE_KEYS) <= set(RESULT_KEYS)
    kinds = {
        "NVIDIA H100 80GB HBM3": 3.35,
        "NVIDIA H100 PCIe": 2.0,
        "NVIDIA H200": 4.8,
        "NVIDIA A100-SXM4-80GB": 2.039,
        "NVIDIA A100 80GB PCIe": 1.935,
        "NVIDIA A100-SXM4-40GB": 1.555,
        "TPU v4": 1.2,
        "TPU v5 lite": 0.819,
        "TPU v5": 2.765,
        "TPU v6 lite": 1.64,
    }
    for kind, tbps in kinds.items():
        assert peaks.bandwidth_for(kind).tbps == tbps, kind
    assert peaks.bandwidth_for("cpu") is None and peaks.bandwidth_for("TPU v4 lite") is None
