"""Every family is the model it names: logits and greedy tokens against the reference
implementations' (issue 22).

tests/golden/<case>.npz holds a reference model's seeded random weights (its own state-dict
names), a fixed input, the reference's float32 logits and, for the language models, the
tokens of its generate(do_sample=False); tests/golden/make_golden.py made them with PyTorch,
transformers and timm, none of which these tests need. Each test builds archbench's module of
the same small configuration from the family's module class, converts the weights with
archbench.archs.convert.from_reference, and checks the logits within TOLERANCE and the
greedy tokens of archbench's generation path (the KV cache, Mamba's recurrent state)
exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs import convert
from archbench.archs.resnet import BasicBlock, Bottleneck
from archbench.engine.generate import cache_shapes, empty_cache, greedy_forward, greedy_step

GOLDEN = Path(__file__).parent / "golden"
TOLERANCE = 1e-4  # absolute; the golden logits reach 0.5 to 15 in magnitude
# The golden configurations: 2 layers 32 wide, a vocabulary of 256, 32x32 images.
LM = dict(vocab_size=256, num_layers=2, width=32)
IMAGE = dict(patch_size=8, num_layers=2, num_classes=10)


@dataclass(frozen=True)
class Case:
    """One golden fixture and the archbench module that should compute the same function."""

    arch: str
    fixture: str  # tests/golden/<fixture>.npz
    fields: dict = field(hash=False)  # the module's fields, matching the reference's config

    def module(self):
        return archs.get(self.arch).module(**self.fields)


TRANSFORMER = dict(LM, num_heads=4, max_len=32)
LLAMA = dict(TRANSFORMER, num_kv_heads=2)
RESNET = dict(stage_sizes=(1, 1, 1, 1), num_classes=10)
CASES = [
    Case("gpt", "gpt", dict(TRANSFORMER, mlp_dim=128)),
    Case("encoder", "encoder", dict(TRANSFORMER, mlp_dim=128, num_token_types=2, num_classes=5)),
    # Llama 3's shape: grouped-query attention and theta 500,000.
    Case("llama", "llama", dict(LLAMA, mlp_dim=96, rope_base=500_000.0)),
    # The default dispatch, dropless: no token is dropped, as in Mixtral.
    Case("moe", "moe", dict(LLAMA, mlp_dim=64, rope_base=1e6, num_experts=4, top_k=2)),
    Case("mamba", "mamba", dict(LM, scan="scan")),
    Case("mamba", "mamba", dict(LM, scan="assoc")),
    Case("vit", "vit", dict(IMAGE, width=32, num_heads=4, mlp_dim=128)),
    Case("mixer", "mixer", dict(IMAGE, hidden_dim=32, tokens_mlp_dim=16, channels_mlp_dim=128)),
    Case("resnet", "resnet-basic", dict(RESNET, block_cls=BasicBlock, widths=(64, 16, 16, 16))),
    Case("resnet", "resnet-bottleneck", dict(RESNET, block_cls=Bottleneck, widths=(64, 8, 8, 8))),
]


def case_id(case: Case) -> str:
    scan = case.fields.get("scan")
    return f"{case.fixture}-{scan}" if scan else case.fixture


def load(fixture: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the reference's state dict, the golden arrays: input, logits, generated, meta)."""
    with np.load(GOLDEN / f"{fixture}.npz") as npz:
        arrays = dict(npz)
    golden = {k.removeprefix("golden."): arrays.pop(k) for k in list(arrays) if "golden." in k}
    return arrays, golden


def model_input(golden: dict[str, np.ndarray]) -> jax.Array:
    x = golden["input"]
    if x.ndim == 4:  # PyTorch's (B, C, H, W) images -> archbench's (B, H, W, C)
        return jnp.asarray(x.transpose(0, 2, 3, 1))
    return jnp.asarray(x, jnp.int32)


@functools.cache
def prepared(case: Case):
    """(module, its variables converted from the reference's weights, the golden arrays)."""
    state_dict, golden = load(case.fixture)
    module = case.module()
    return module, convert.from_reference(case.arch, state_dict, module), golden


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_logits_match_the_reference(case):
    module, variables, golden = prepared(case)
    logits = jax.jit(module.apply)(variables, model_input(golden))
    expected = golden["logits"]
    assert logits.shape == expected.shape
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=TOLERANCE)


# Mamba decodes with the same recurrence whichever scan its forward pass uses.
LM_CASES = [c for c in CASES if archs.get(c.arch).task == "lm" and c.fields.get("scan") != "assoc"]


@pytest.mark.parametrize("case", LM_CASES, ids=case_id)
def test_greedy_tokens_match_the_reference_generate(case):
    """The prompt through archbench's prefill, then one token at a time through its decode
    step (the KV cache or the SSM state), as the generate cells run it."""
    module, variables, golden = prepared(case)
    prompt, expected = model_input(golden), golden["generated"]
    batch, length = prompt.shape
    cache = empty_cache(cache_shapes(module, batch, length + expected.shape[1]))
    prefill = jax.jit(functools.partial(greedy_forward, module))
    step = jax.jit(functools.partial(greedy_step, module))
    token, cache = prefill(variables["params"], cache, prompt)
    tokens = [token]
    for _ in range(expected.shape[1] - 1):
        token, cache = step(variables["params"], cache, token)
        tokens.append(token)
    np.testing.assert_array_equal(np.stack(tokens, axis=1), expected)


def test_every_converted_family_has_a_golden_case():
    assert {c.arch for c in CASES} == set(convert.FAMILIES)


def test_a_weight_the_module_has_no_place_for_is_an_error():
    state_dict, _ = load("gpt")
    module = CASES[0].module()
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.extra"):
        convert.from_reference("gpt", {**state_dict, "transformer.h.0.attn.extra": np.ones(3)}, module)  # fmt: skip
    del state_dict["transformer.ln_f.bias"]
    with pytest.raises(KeyError, match=r"ln_f\.bias"):
        convert.from_reference("gpt", state_dict, module)


def test_a_bias_the_family_has_not_is_an_error():
    """A checkpoint with query biases (Qwen's) is not a Llama: its biases would be lost."""
    state_dict, _ = load("llama")
    state_dict["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    llama = next(c for c in CASES if c.arch == "llama")
    with pytest.raises(ValueError, match=r"q_proj\.bias"):
        convert.from_reference("llama", state_dict, llama.module())


def test_an_untied_output_head_is_refused_where_the_family_ties_it():
    state_dict, _ = load("mamba")
    state_dict["lm_head.weight"] = state_dict["backbone.embeddings.weight"] + 1
    with pytest.raises(ValueError, match="ties them"):
        convert.from_reference("mamba", state_dict, archs.get("mamba").module(**LM))


@pytest.mark.parametrize(
    ("fixture", "rename"),
    [
        # The gpt2 checkpoint on the Hugging Face hub is a GPT2Model's (no "transformer.")
        # and still carries each layer's causal mask as attn.bias.
        ("gpt", lambda k: k.removeprefix("transformer.")),
        # state-spaces/mamba's own checkpoints: backbone.embedding, and a saved tied head.
        ("mamba", lambda k: k.replace("embeddings.", "embedding.")),
    ],
)
def test_released_checkpoint_names_convert_alike(fixture, rename):
    state_dict, _ = load(fixture)
    case = next(c for c in CASES if c.fixture == fixture)
    released = {rename(k): v for k, v in state_dict.items()}
    if fixture == "gpt":
        released["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    else:
        released["lm_head.weight"] = released["backbone.embedding.weight"]
    module = case.module()
    expected = convert.from_reference(case.arch, state_dict, module)
    jax.tree.map(
        np.testing.assert_array_equal, expected, convert.from_reference(case.arch, released, module)
    )


def test_mixtral_released_layout_converts_as_the_fused_one():
    """The released checkpoints keep each expert's w1, w2, w3 (and block_sparse_moe.gate);
    transformers 5 fuses them into gate_up_proj and down_proj."""
    state_dict, _ = load("moe")
    case = next(c for c in CASES if c.arch == "moe")
    released = {}
    for name, array in state_dict.items():
        layer, _, rest = name.partition(".mlp.")
        if not rest:
            released[name] = array
        elif rest == "gate.weight":
            released[f"{layer}.block_sparse_moe.gate.weight"] = array
        elif rest == "experts.gate_up_proj":
            gate, up = np.split(array, 2, axis=1)  # (E, F, D) each
            for e in range(gate.shape[0]):
                released[f"{layer}.block_sparse_moe.experts.{e}.w1.weight"] = gate[e]
                released[f"{layer}.block_sparse_moe.experts.{e}.w3.weight"] = up[e]
        elif rest == "experts.down_proj":
            for e in range(array.shape[0]):
                released[f"{layer}.block_sparse_moe.experts.{e}.w2.weight"] = array[e]
    module = case.module()
    fused = convert.from_reference("moe", state_dict, module)
    split = convert.from_reference("moe", released, module)
    jax.tree.map(np.testing.assert_array_equal, fused, split)
