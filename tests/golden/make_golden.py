"""Make the golden fixtures: the reference implementations' random weights and float32 logits.

For each family archbench reproduces (gpt, encoder, llama, moe, mamba, vit, mixer, resnet),
build the reference implementation's model in a small configuration (2 layers, width 32, a
short sequence or a 32x32 image) with seeded random weights, run it in float32 on a fixed
input, and save tests/golden/<name>.npz:

    <state-dict name>    every weight and buffer, float32, as the reference names it (a tied
                         output head once, under the embedding's name)
    golden.input         the input: tokens (B, T) int64, or images (B, 3, H, W) NCHW float32
    golden.logits        the reference's logits in float32: (B, T, V) or (B, classes)
    golden.generated     language models: generate(do_sample=False)'s new tokens (B, G)
    golden.meta          JSON: the reference class, its configuration, library versions

tests/test_golden.py converts the weights with archbench.archs.convert.from_reference and
compares archbench's logits (and greedy tokens) with these. ResNet has two fixtures,
resnet-basic and resnet-bottleneck, one for each block. The weights are the reference's
own initialisation at about unit gain (INIT_RANGE; timm's "jax" init for ViT), with every
constant tensor (LayerNorm and RMSNorm scales, zero biases, BatchNorm statistics, a
zero-initialised head) given random values, so that a weight in the wrong place, or a
detail of a non-linearity, changes the logits by more than the tests' 1e-4. Where archbench follows a convention the
PyTorch port does not (ViT's and Mixer's tanh GELU, as Google's released JAX code), the
reference is configured with archbench's convention; the family's docstring says so.

It needs PyTorch, transformers and timm (the `reference` extra of pyproject.toml), not
archbench or JAX, so it runs on Python 3.11 with a CPU build of PyTorch:

    python3.11 -m venv /work/golden-venv
    /work/golden-venv/bin/pip install torch==2.13.0 transformers timm numpy
    /work/golden-venv/bin/python tests/golden/make_golden.py            # every family
    /work/golden-venv/bin/python tests/golden/make_golden.py gpt mamba  # some of them

Made with torch 2.13.0 (CPU), transformers 5.25.0 and timm 1.0.31 (golden.meta records them).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

SEED = 0
BATCH, PROMPT_LEN, NEW_TOKENS = 2, 12, 6  # language models: logits of (B, P), then G tokens
IMAGE = (3, 32, 32)
VOCAB, WIDTH, LAYERS, HEADS, MAX_LEN = 256, 32, 2, 4, 32
OUT = Path(__file__).resolve().parent
REFERENCE_PACKAGES = ("torch", "transformers", "timm")
# The Hugging Face models' weights are drawn from N(0, INIT_RANGE^2), about 1 / sqrt(WIDTH), so
# that each matrix keeps its input's scale and activations reach the non-linear ranges of
# GELU, softmax and routing, where a detail of any of them shows in the logits (their default,
# 0.02, suits widths near 768: at width 32 it leaves every layer close to linear).
INIT_RANGE = 0.2
MIN_GAP = 1e-3  # the least margin of a greedy token over the runner-up we accept


def importable_torchvision() -> None:
    """Make torchvision importable (transformers and timm import it). A torchvision wheel
    built for CUDA beside a CPU build of torch cannot load its compiled ops, and its import
    then fails registering the fake kernels of two of them; defining those two (never called
    here) lets it import."""
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        importable_torchvision.library = library  # keep the definitions alive
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401


# ---- the reference models, each (model, kind, config for golden.meta) ---------------------


def gpt():
    config = transformers.GPT2Config(
        initializer_range=INIT_RANGE,
        vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config), "lm", config.to_dict()


def encoder():
    config = transformers.BertConfig(
        initializer_range=INIT_RANGE,
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=4 * WIDTH, max_position_embeddings=MAX_LEN, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-12, num_labels=5, pad_token_id=0,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    # The embeddings at BERT's own scale, N(0, 0.02^2): the embedding LayerNorm then sees a
    # variance near 1e-3, where its eps (1e-12; PyTorch's default is 1e-5) shows in the logits.
    with torch.no_grad():
        for table in ("word", "position", "token_type"):
            getattr(model.bert.embeddings, f"{table}_embeddings").weight.mul_(0.02 / INIT_RANGE)
    return model, "tokens", config.to_dict()


def llama():
    # Llama 3's shape: grouped-query attention (4 query heads, 2 key/value heads), theta 5e5.
    config = transformers.LlamaConfig(
        initializer_range=INIT_RANGE,
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=MAX_LEN,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config), "lm", config.to_dict()


def moe():
    config = transformers.MixtralConfig(
        initializer_range=INIT_RANGE,
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=MAX_LEN,
        num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        sliding_window=None, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return transformers.MixtralForCausalLM(config), "lm", config.to_dict()


def mamba():
    config = transformers.MambaConfig(
        initializer_range=INIT_RANGE,
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, state_size=16,
        conv_kernel=4, expand=2, time_step_rank="auto", use_bias=False, use_conv_bias=True,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return transformers.MambaForCausalLM(config), "lm", config.to_dict()


def vit():
    from timm.models.vision_transformer import VisionTransformer

    # archbench's ViT uses the tanh GELU of Google's released JAX code; timm's default is erf.
    # weight_init "jax" is that code's initialisation (xavier-uniform matrices).
    config = dict(
        img_size=IMAGE[1], patch_size=8, in_chans=IMAGE[0], num_classes=10, embed_dim=WIDTH,
        depth=LAYERS, num_heads=HEADS, mlp_ratio=4.0, qkv_bias=True, class_token=True,
        global_pool="token", act_layer="gelu_tanh", weight_init="jax",
    )  # fmt: skip
    return VisionTransformer(**config), "image", config


def mixer():
    from timm.models.mlp_mixer import MlpMixer

    config = dict(
        img_size=IMAGE[1], patch_size=8, in_chans=IMAGE[0], num_classes=10, num_blocks=LAYERS,
        embed_dim=WIDTH, mlp_ratio=(0.5, 4.0), global_pool="avg",
    )  # fmt: skip
    # archbench's Mixer uses the tanh GELU of Google's released JAX code; timm's default is erf.
    act = functools.partial(torch.nn.GELU, approximate="tanh")
    return MlpMixer(**config, act_layer=act), "image", {**config, "act_layer": "gelu_tanh"}


def resnet(block: str):
    from timm.models import resnet as timm_resnet

    # timm's ResNet is torchvision's (the same names): a 7x7/2 stem of 64 channels and a 3x3/2
    # max pool, then four stages of one block each, stages 2-4 with stride 2 and a projection.
    # The stem fixes the first stage's width at 64 (archbench's stem is as wide as the first
    # stage); narrow later stages keep the fixtures small.
    channels = (64, 16, 16, 16) if block == "BasicBlock" else (64, 8, 8, 8)
    config = dict(layers=(1, 1, 1, 1), channels=channels, num_classes=10, in_chans=IMAGE[0])
    model = timm_resnet.ResNet(getattr(timm_resnet, block), **config)
    return model, "image", {**config, "block": block}


REFERENCES = {
    "gpt": gpt,
    "encoder": encoder,
    "llama": llama,
    "moe": moe,
    "mamba": mamba,
    "vit": vit,
    "mixer": mixer,
    "resnet-basic": functools.partial(resnet, "BasicBlock"),
    "resnet-bottleneck": functools.partial(resnet, "Bottleneck"),
}


# ---- weights, inputs, outputs -------------------------------------------------------------


@torch.no_grad()
def randomize_constants(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every constant tensor (all elements equal, or nearly: norm scales, zero biases, a
    zero head, a class token drawn with std 1e-6) random values, so that each is tested:
    vectors + N(0, 0.1^2), matrices (zero-initialised heads) N(0, 1); BatchNorm's running
    variances U(0.5, 1.5) and means N(0, 0.1^2)."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        elif name.endswith("running_mean") or tensor.numel() == 1 or tensor.std() < 1e-3:
            if tensor.squeeze().dim() <= 1:
                tensor.add_(0.1 * noise)
            else:
                tensor.copy_(noise)


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The state dict as NumPy arrays, a tensor shared by several names (a tied head) once."""
    arrays, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=False).items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        array = tensor.numpy()
        arrays[name] = array.astype(np.float32) if tensor.is_floating_point() else array
    return arrays


def make_input(kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "image":
        return torch.randn((BATCH, *IMAGE), generator=generator)
    return torch.randint(0, VOCAB, (BATCH, PROMPT_LEN), generator=generator)


@torch.no_grad()
def greedy_tokens(model, prompt: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
    """generate(do_sample=False)'s NEW_TOKENS new tokens (B, G), checked to be clear winners."""
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    steps = torch.stack(out.logits, dim=1)  # (B, G, V)
    torch.testing.assert_close(steps[:, 0], logits[:, -1], rtol=1e-5, atol=1e-5)
    top2 = steps.topk(2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1]).min().item()
    if gap < MIN_GAP:
        raise SystemExit(f"greedy decoding has a near tie ({gap:.2e}); choose another SEED")
    return out.sequences[:, prompt.shape[1] :].numpy()


def make(name: str) -> dict[str, np.ndarray]:
    torch.manual_seed(SEED)
    model, kind, config = REFERENCES[name]()
    model = model.float().eval()
    generator = torch.Generator().manual_seed(SEED)
    randomize_constants(model, generator)
    x = make_input(kind, generator)
    with torch.no_grad():
        out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    arrays = state_arrays(model)
    arrays["golden.input"] = x.numpy()
    arrays["golden.logits"] = logits.numpy().astype(np.float32)
    if kind == "lm":
        arrays["golden.generated"] = greedy_tokens(model, x, logits)
    meta = {
        "reference": f"{type(model).__module__}.{type(model).__name__}",
        "config": config,
        "versions": {name: importlib.metadata.version(name) for name in REFERENCE_PACKAGES},
    }
    arrays["golden.meta"] = np.array(json.dumps(meta, sort_keys=True, default=str))
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(REFERENCES)} (all)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the .npz files")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(REFERENCES))
    if unknown:
        parser.error(f"unknown {unknown}; valid: {', '.join(REFERENCES)}")
    torch.use_deterministic_algorithms(True)
    importable_torchvision()
    for name in args.names or REFERENCES:
        path = args.out / f"{name}.npz"
        np.savez_compressed(path, **make(name))
        print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
