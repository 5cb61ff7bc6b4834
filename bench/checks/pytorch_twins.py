"""PyTorch twins of archbench's families: the same widths, depths and heads, so the same
parameter count, built from the module fields of an archbench size.

Runs in a Python that has PyTorch, not archbench (PyTorch's CPU wheel exists for Python
3.11; archbench needs 3.12): bench/checks/pytorch_server.py imports it there, for
`python -m archbench.checks.pytorch_ab`. Nothing in archbench imports it.

The Transformer families are Hugging Face transformers' models (attention "sdpa"), ViT and
MLP-Mixer timm's, as tests/golden/make_golden.py configures them to match archbench's; the
rest are written here after archbench's modules. Where archbench keeps one bias per gate
(its LSTM and RNN, as Keras), PyTorch's second bias is zero and frozen, so the trainable
counts agree. A twin takes (fields, spec): the archbench module's fields by name, and the
request (its "input": kind, shape HxWxC or TxF, vocab_size).
"""

from __future__ import annotations

import functools
import math
import sys

import torch
from torch import nn


def _importable_torchvision() -> None:
    """transformers and timm import torchvision, whose wheel (built against CUDA) fails to
    register two of its compiled ops beside torch's CPU build; define them (never called)."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _importable_torchvision.library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _importable_torchvision.library.define(
                f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )


# ---- Hugging Face and timm models --------------------------------------------------------


def _hf(name: str, **config):
    _importable_torchvision()
    import transformers

    if name != "Mamba":  # no attention in Mamba; transformers refuses the option there
        config["attn_implementation"] = "sdpa"
    config = getattr(transformers, f"{name}Config")(**config)
    head = "ForSequenceClassification" if name == "Bert" else "ForCausalLM"
    if name == "GPT2":
        head = "LMHeadModel"
    return getattr(transformers, name + head)(config)


def gpt(f, spec):
    return _hf(
        "GPT2", vocab_size=f["vocab_size"], n_positions=f["max_len"], n_embd=f["width"],
        n_layer=f["num_layers"], n_head=f["num_heads"], n_inner=f["mlp_dim"],
        activation_function="gelu_new", layer_norm_epsilon=f["layer_norm_eps"],
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip


def encoder(f, spec):
    return _hf(
        "Bert", vocab_size=f["vocab_size"], hidden_size=f["width"],
        num_hidden_layers=f["num_layers"], num_attention_heads=f["num_heads"],
        intermediate_size=f["mlp_dim"], max_position_embeddings=f["max_len"],
        type_vocab_size=f["num_token_types"], num_labels=f["num_classes"], hidden_act="gelu",
        layer_norm_eps=f["layer_norm_eps"],
    )  # fmt: skip


def _llama_like(f) -> dict:
    return dict(
        vocab_size=f["vocab_size"], hidden_size=f["width"], num_hidden_layers=f["num_layers"],
        num_attention_heads=f["num_heads"], num_key_value_heads=f["num_kv_heads"],
        intermediate_size=f["mlp_dim"], max_position_embeddings=f["max_len"],
        rms_norm_eps=f["norm_eps"], tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": f["rope_base"]},
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip


def llama(f, spec):
    return _hf("Llama", **_llama_like(f))


def moe(f, spec):
    return _hf(
        "Mixtral", **_llama_like(f), num_local_experts=f["num_experts"],
        num_experts_per_tok=f["top_k"], router_aux_loss_coef=f["aux_loss_coef"],
        output_router_logits=True, router_jitter_noise=0.0, sliding_window=None,
    )  # fmt: skip


def mamba(f, spec):
    return _hf(
        "Mamba", vocab_size=f["vocab_size"], hidden_size=f["width"],
        num_hidden_layers=f["num_layers"], state_size=f["d_state"], conv_kernel=f["d_conv"],
        expand=f["expand"], time_step_rank=f["dt_rank"] or "auto", use_bias=False,
        use_conv_bias=True, layer_norm_epsilon=f["norm_eps"], tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip


def vit(f, spec):
    _importable_torchvision()
    from timm.models.vision_transformer import VisionTransformer

    h, _, c = spec["input"]["shape"]
    return VisionTransformer(
        img_size=h, patch_size=f["patch_size"], in_chans=c, num_classes=f["num_classes"],
        embed_dim=f["width"], depth=f["num_layers"], num_heads=f["num_heads"],
        mlp_ratio=f["mlp_dim"] / f["width"], qkv_bias=True, class_token=True,
        global_pool="token", act_layer="gelu_tanh",
    )  # fmt: skip


def mixer(f, spec):
    _importable_torchvision()
    from timm.models.mlp_mixer import MlpMixer

    h, _, c = spec["input"]["shape"]
    # timm sizes both MLPs as int(ratio * channels): half a unit more survives the rounding
    width = f["hidden_dim"]
    return MlpMixer(
        img_size=h, patch_size=f["patch_size"], in_chans=c, num_classes=f["num_classes"],
        num_blocks=f["num_layers"], embed_dim=f["hidden_dim"],
        mlp_ratio=((f["tokens_mlp_dim"] + 0.5) / width, (f["channels_mlp_dim"] + 0.5) / width),
        global_pool="avg", act_layer=lambda: nn.GELU(approximate="tanh"),
    )  # fmt: skip


# ---- written after archbench's modules ----------------------------------------------------

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _pad_same(k: int) -> int:
    return (k - 1) // 2  # XLA's SAME for odd kernels (a stride 2 pads one side more there)


class _Block(nn.Module):
    """archbench's BasicBlock (its ResNet's CIFAR form): 3x3, BN, ReLU, 3x3, BN, shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, kind: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.stride, self.extra, self.proj = stride, cout - cin, None
        if (cin != cout or stride != 1) and kind == "projection":
            self.proj = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        if self.proj is not None:
            short = self.proj(x)
        elif self.stride != 1 or self.extra:  # option A: subsample, zero channels
            short = nn.functional.pad(
                x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra)
            )
        else:
            short = x
        return torch.relu(self.body(x) + short)


def resnet(f, spec):
    if f["block_cls"] != "BasicBlock" or f["stem"] != "cifar":
        raise ValueError("the twin is archbench's CIFAR ResNet (BasicBlock, cifar stem) only")
    c, w0 = spec["input"]["shape"][-1], f["widths"][0]
    layers = [nn.Conv2d(c, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU()]
    cin = w0
    for i, (blocks, width) in enumerate(zip(f["stage_sizes"], f["widths"], strict=True)):
        for j in range(blocks):
            layers.append(_Block(cin, width, 2 if i > 0 and j == 0 else 1, f["shortcut"]))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, f["num_classes"])]
    return nn.Sequential(*layers)


def _conv_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, _pad_same(k)), nn.ReLU())


class _Inception(nn.Module):
    def __init__(self, cin: int, widths):
        super().__init__()
        n1, r3, n3, r5, n5, pp = widths
        self.b1 = _conv_relu(cin, n1, 1)
        self.b3 = nn.Sequential(_conv_relu(cin, r3, 1), _conv_relu(r3, n3, 3))
        self.b5 = nn.Sequential(_conv_relu(cin, r5, 1), _conv_relu(r5, n5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_relu(cin, pp, 1))
        self.out = n1 + n3 + n5 + pp

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


def inception(f, spec):
    c = spec["input"]["shape"][-1]
    c1, r2, c2 = f["stem_widths"]
    pool = lambda: nn.MaxPool2d(3, 2, 1)  # noqa: E731
    layers = [_conv_relu(c, c1, 7, 2), pool(), _conv_relu(c1, r2, 1), _conv_relu(r2, c2, 3), pool()]
    cin = c2
    for i, stage in enumerate(f["stages"]):
        layers += [pool()] if i > 0 else []
        for widths in stage:
            layers.append(_Inception(cin, widths))
            cin = layers[-1].out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(f["dropout"])]
    return nn.Sequential(*layers, nn.Linear(cin, f["num_classes"]))


def lenet5(f, spec):
    c1, c3, c5, f6 = f["widths"]
    act = ACTS[f["act"]]
    return nn.Sequential(
        nn.Conv2d(spec["input"]["shape"][-1], c1, 5), act(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c3, 5), act(), nn.AvgPool2d(2), nn.Conv2d(c3, c5, 5), act(),
        nn.Flatten(), nn.Linear(c5, f6), act(), nn.Linear(f6, f["num_classes"]),
    )  # fmt: skip


def mlp(f, spec):
    layers, cin = [nn.Flatten()], math.prod(spec["input"]["shape"])
    for width in f["hidden"]:
        layers += [nn.Linear(cin, width), ACTS[f["act"]](), nn.Dropout(f["dropout"])]
        cin = width
    return nn.Sequential(*layers, nn.Linear(cin, f["num_classes"]))


def cnn(f, spec):
    if f["padding"] != "SAME" or f["strides"] != 1:
        raise ValueError("the twin is archbench's CNN with SAME padding and stride 1 only")
    h, w, cin = spec["input"]["shape"]
    layers = []
    for width, k in zip(f["features"], f["kernels"], strict=True):
        layers += [nn.Conv2d(cin, width, k, 1, _pad_same(k)), ACTS[f["act"]]()]
        if f["pool"] > 1:
            layers.append(nn.AvgPool2d(f["pool"]))
            h, w = h // f["pool"], w // f["pool"]
        cin = width
    head = mlp({**f, "dropout": 0.0}, {"input": {"shape": (h, w, cin)}})
    return nn.Sequential(*layers, *head)


class _Recurrent(nn.Module):
    """archbench's RecurrentClassifier: stacked layers, a dense head on the last state."""

    def __init__(self, kind: str, f, spec):
        super().__init__()
        if f["bidirectional"] or f["readout"] != "last":
            raise ValueError("the twin is one-directional with readout 'last' only")
        cin, layers = spec["input"]["shape"][-1], []
        for width in f["hidden"]:
            args = {"nonlinearity": f["act"]} if kind == "RNN" else {}
            layer = getattr(nn, kind)(cin, width, batch_first=True, **args)
            if kind != "GRU":  # archbench's LSTM and RNN have one bias a gate: no second one
                layer.bias_hh_l0.data.zero_()
                layer.bias_hh_l0.requires_grad_(False)
            layers.append(layer)
            cin = width
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(cin, f["num_classes"])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return self.head(x[:, -1])


TWINS = {
    "gpt": gpt, "encoder": encoder, "llama": llama, "moe": moe, "mamba": mamba, "vit": vit,
    "mixer": mixer, "resnet": resnet, "inception": inception, "lenet5": lenet5, "mlp": mlp,
    "cnn": cnn, "lstm": functools.partial(_Recurrent, "LSTM"),
    "gru": functools.partial(_Recurrent, "GRU"), "rnn": functools.partial(_Recurrent, "RNN"),
    "deep_rnn": functools.partial(_Recurrent, "RNN"),
}  # fmt: skip
