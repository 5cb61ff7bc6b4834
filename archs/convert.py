"""Reference checkpoints as archbench parameters: the published models' weights in this zoo.

`from_reference(arch, state_dict, module)` maps the state dict of a family's reference
implementation (names -> arrays, as `safetensors.numpy.load_file(path)` returns it, or
`{k: v.numpy() for k, v in model.state_dict().items()}`) onto the variables of archbench's
`module`, so that `module.apply(variables, x)` computes the reference model's function:

| arch    | reference (its state-dict names)                                         |
|---------|--------------------------------------------------------------------------|
| gpt     | Hugging Face transformers GPT2LMHeadModel or GPT2Model                   |
| encoder | Hugging Face BertForSequenceClassification                               |
| llama   | Hugging Face LlamaForCausalLM                                            |
| moe     | Hugging Face MixtralForCausalLM (fused experts of transformers 5, or the |
|         | per-expert w1/w2/w3 of the released checkpoints)                         |
| mamba   | Hugging Face MambaForCausalLM (or state-spaces/mamba's MambaLMHeadModel) |
| vit     | timm VisionTransformer (class token, global_pool "token")                |
| mixer   | timm MlpMixer                                                            |
| resnet  | timm ResNet or torchvision resnet (the same names)                       |

tests/test_golden.py checks each against the reference's logits (tests/golden/). The mapping
is NumPy only: PyTorch's Linear weights (out, in) become Dense kernels (in, out), attention
projections are split into heads, convolution kernels go from OIHW to HWIO. Every parameter
of the module must be found, and every array of the state dict used, except buffers that
hold no weights (IGNORED); either mismatch raises. The arrays are cast to the module's
param_dtype; shapes are checked by Flax when the module is applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

# State-dict entries that carry no weights: GPT-2's stored causal masks, rotary frequency
# tables, BERT's position ids, BatchNorm's update counter.
IGNORED = re.compile(
    r"(^|\.)(attn\.(masked_)?bias|rotary_emb\.inv_freq|position_ids|num_batches_tracked)$"
)


class StateDict:
    """A reference state dict read by name: tries each prefix, and remembers what was used."""

    def __init__(self, arrays: Mapping[str, np.ndarray], prefixes: tuple[str, ...], dtype):
        self.arrays, self.prefixes, self.dtype = arrays, (*prefixes, ""), np.dtype(dtype)
        self.used: set[str] = set()

    def key(self, *names: str) -> str | None:
        """The first of prefix + name (each prefix, each name) that the state dict has."""
        for name in names:
            for prefix in self.prefixes:
                if prefix + name in self.arrays:
                    return prefix + name
        return None

    def __call__(self, *names: str) -> np.ndarray:
        """The array of the first name found (as float32), marked as used."""
        key = self.key(*names)
        if key is None:
            raise KeyError(f"the state dict has no {' or '.join(names)} (prefixes {self.prefixes})")
        self.used.add(key)
        return np.asarray(self.arrays[key], np.float32)

    def linear(self, name: str, bias: bool = True) -> dict[str, np.ndarray]:
        """A torch Linear `name` (weight (out, in), and a bias if the module has one) as a
        Dense's parameters; a bias the module lacks is left over (an error in `finish`)."""
        params = {"kernel": self(f"{name}.weight").T}
        return {**params, "bias": self(f"{name}.bias")} if bias else params

    def norm(self, name: str, bias: bool = True) -> dict[str, np.ndarray]:
        """A LayerNorm or RMSNorm (weight, bias) as Flax's (scale, bias)."""
        params = {"scale": self(f"{name}.weight")}
        return {**params, "bias": self(f"{name}.bias")} if bias else params

    def finish(self, tree: dict) -> dict:
        """`tree` cast to the dtype, once every array of the state dict has been used."""
        unused = sorted(k for k in self.arrays if k not in self.used and not IGNORED.search(k))
        if unused:
            raise ValueError(f"state dict entries with no place in the module: {unused}")
        return _tree_map(lambda a: a.astype(self.dtype), tree)


def _tree_map(fn: Callable, tree):
    return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def heads(dense: dict[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
    """A Dense (D, H * Dh) as the DenseGeneral (D, H, Dh) of a query, key or value projection."""
    kernel = dense["kernel"]
    out = {"kernel": kernel.reshape(kernel.shape[0], num_heads, -1)}
    return {**out, "bias": dense["bias"].reshape(num_heads, -1)} if "bias" in dense else out


def merge_heads(dense: dict[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
    """A Dense (H * Dh, D) as the DenseGeneral (H, Dh, D) of an attention's output."""
    kernel = dense["kernel"]
    return {**dense, "kernel": kernel.reshape(num_heads, -1, kernel.shape[-1])}


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch's (out, in, kh, kw) convolution kernel as Flax's (kh, kw, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def tied_head(sd: StateDict, embedding: np.ndarray) -> None:
    """Mark a separate output head as used if it is the embedding (a tied checkpoint saves
    both); an untied one is not the model these families compute."""
    key = sd.key("lm_head.weight")
    if key is not None and not np.array_equal(sd(key), embedding):
        raise ValueError(f"{key} differs from the token embedding; this family ties them")


# ---- the families -----------------------------------------------------------------------


def _qkv(fused: dict[str, np.ndarray], num_heads: int) -> dict[str, dict]:
    """A fused (D, 3D) query-key-value Dense (GPT-2's c_attn, timm's qkv) split into heads."""
    parts = {k: np.split(v, 3, axis=-1) for k, v in fused.items()}
    return {
        name: heads({k: v[i] for k, v in parts.items()}, num_heads)
        for i, name in enumerate(("query", "key", "value"))
    }


def gpt(sd: StateDict, module) -> dict:
    """GPT-2: Conv1D weights are already (in, out); c_attn holds query, key and value."""

    def conv1d(name):
        return {"kernel": sd(f"{name}.weight"), "bias": sd(f"{name}.bias")}

    params = {
        "token_embed": {"embedding": sd("wte.weight")},
        "pos_embed": {"embedding": sd("wpe.weight")},
        "ln_final": sd.norm("ln_f"),
    }
    tied_head(sd, params["token_embed"]["embedding"])
    for i in range(module.num_layers):
        h = f"h.{i}"
        attn = _qkv(conv1d(f"{h}.attn.c_attn"), module.num_heads)
        attn["out"] = merge_heads(conv1d(f"{h}.attn.c_proj"), module.num_heads)
        params[f"block_{i}"] = {
            "ln_self_attn": sd.norm(f"{h}.ln_1"),
            "self_attn": attn,
            "ln_mlp": sd.norm(f"{h}.ln_2"),
            "mlp": {"fc": conv1d(f"{h}.mlp.c_fc"), "proj": conv1d(f"{h}.mlp.c_proj")},
        }
    return {"params": params}


def encoder(sd: StateDict, module) -> dict:
    """BERT with a sequence-classification head (pooler, classifier)."""
    if module.vocab_size is None:
        raise ValueError("a BERT checkpoint needs the token encoder (vocab_size set)")
    e = "embeddings"
    params = {
        "token_embed": {"embedding": sd(f"{e}.word_embeddings.weight")},
        "pos_embed": {"embedding": sd(f"{e}.position_embeddings.weight")},
        "ln_embed": sd.norm(f"{e}.LayerNorm"),
        "pooler": sd.linear("pooler.dense"),
        "classifier": sd.linear("classifier"),
    }
    if module.num_token_types:
        params["type_embed"] = {"embedding": sd(f"{e}.token_type_embeddings.weight")}
    for i in range(module.num_layers):
        layer, n = f"encoder.layer.{i}", module.num_heads
        attn = {
            k: heads(sd.linear(f"{layer}.attention.self.{k}"), n) for k in ("query", "key", "value")
        }
        attn["out"] = merge_heads(sd.linear(f"{layer}.attention.output.dense"), n)
        params[f"block_{i}"] = {
            "self_attn": attn,
            "ln_self_attn": sd.norm(f"{layer}.attention.output.LayerNorm"),
            "mlp": {
                "fc": sd.linear(f"{layer}.intermediate.dense"),
                "proj": sd.linear(f"{layer}.output.dense"),
            },
            "ln_mlp": sd.norm(f"{layer}.output.LayerNorm"),
        }
    return {"params": params}


def _llama_attention(sd: StateDict, module, layer: str) -> dict:
    attn = f"{layer}.self_attn"
    return {
        "query": heads(sd.linear(f"{attn}.q_proj", bias=False), module.num_heads),
        "key": heads(sd.linear(f"{attn}.k_proj", bias=False), module.num_kv_heads),
        "value": heads(sd.linear(f"{attn}.v_proj", bias=False), module.num_kv_heads),
        "out": merge_heads(sd.linear(f"{attn}.o_proj", bias=False), module.num_heads),
    }


def _llama(sd: StateDict, module, mlp: Callable[[str], dict]) -> dict:
    """Llama's layout with each block's MLP from `mlp(layer prefix)`."""
    embedding = sd("embed_tokens.weight")
    # A checkpoint that ties the head to the embedding (Llama 3.2 1B) saves no lm_head.
    head = sd("lm_head.weight") if sd.key("lm_head.weight") else embedding
    params = {
        "token_embed": {"embedding": embedding},
        "norm_final": sd.norm("norm", bias=False),
        "output": {"kernel": head.T},
    }
    for i in range(module.num_layers):
        layer = f"layers.{i}"
        params[f"block_{i}"] = {
            "attention_norm": sd.norm(f"{layer}.input_layernorm", bias=False),
            "attention": _llama_attention(sd, module, layer),
            "mlp_norm": sd.norm(f"{layer}.post_attention_layernorm", bias=False),
            "mlp": mlp(layer),
        }
    return {"params": params}


def llama(sd: StateDict, module) -> dict:
    """Llama: SwiGLU's gate_proj, up_proj and down_proj are w1, w3 and w2."""

    def swiglu(layer):
        names = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
        return {w: sd.linear(f"{layer}.mlp.{name}", bias=False) for w, name in names.items()}

    return _llama(sd, module, swiglu)


def moe(sd: StateDict, module) -> dict:
    """Mixtral: the router, and the experts' w1, w3 (D, F) and w2 (F, D) stacked (E, ...)."""

    def routed(layer):
        router = sd(f"{layer}.mlp.gate.weight", f"{layer}.block_sparse_moe.gate.weight")
        fused = f"{layer}.mlp.experts.gate_up_proj"
        if sd.key(fused):  # transformers 5: (E, 2F, D) gate then up, and (E, D, F)
            gate, up = np.split(sd(fused), 2, axis=1)
            down = sd(f"{layer}.mlp.experts.down_proj")
            experts = {"w1": gate, "w3": up, "w2": down}
            experts = {w: a.transpose(0, 2, 1) for w, a in experts.items()}
        else:  # the released checkpoints: each expert's w1, w3 (F, D) and w2 (D, F)
            prefix = f"{layer}.block_sparse_moe.experts"
            experts = {
                w: np.stack([sd(f"{prefix}.{e}.{w}.weight").T for e in range(module.num_experts)])
                for w in ("w1", "w2", "w3")
            }
        return {"router": {"kernel": router.T}, "experts": experts}

    return _llama(sd, module, routed)


def mamba(sd: StateDict, module) -> dict:
    """Mamba: the depthwise conv's (Di, 1, K) weight becomes a (K, Di) kernel."""
    embedding = sd("embeddings.weight", "embedding.weight")
    tied_head(sd, embedding)
    params = {"embedding": {"embedding": embedding}, "norm_f": sd.norm("norm_f", bias=False)}
    for i in range(module.num_layers):
        mixer = f"layers.{i}.mixer"
        params[f"norm_{i}"] = sd.norm(f"layers.{i}.norm", bias=False)
        params[f"layer_{i}"] = {
            "in_proj": sd.linear(f"{mixer}.in_proj", bias=False),
            "conv_kernel": sd(f"{mixer}.conv1d.weight")[:, 0, :].T,
            "conv_bias": sd(f"{mixer}.conv1d.bias"),
            "x_proj": sd.linear(f"{mixer}.x_proj", bias=False),
            "dt_proj": sd.linear(f"{mixer}.dt_proj"),
            "A_log": sd(f"{mixer}.A_log"),
            "D": sd(f"{mixer}.D"),
            "out_proj": sd.linear(f"{mixer}.out_proj", bias=False),
        }
    return {"params": params}


def vit(sd: StateDict, module) -> dict:
    """timm's ViT: patch conv, class token, positions (class token's first), fused qkv."""
    params = {
        "patch_embed": {
            "kernel": conv_kernel(sd("patch_embed.proj.weight")),
            "bias": sd("patch_embed.proj.bias"),
        },
        "cls_token": sd("cls_token"),
        "pos_embed": {"embedding": sd("pos_embed")[0]},
        "ln_final": sd.norm("norm"),
        "head": sd.linear("head"),
    }
    for i in range(module.num_layers):
        block = f"blocks.{i}"
        attn = _qkv(sd.linear(f"{block}.attn.qkv"), module.num_heads)
        attn["out"] = merge_heads(sd.linear(f"{block}.attn.proj"), module.num_heads)
        params[f"block_{i}"] = {
            "ln_self_attn": sd.norm(f"{block}.norm1"),
            "self_attn": attn,
            "ln_mlp": sd.norm(f"{block}.norm2"),
            "mlp": {"fc": sd.linear(f"{block}.mlp.fc1"), "proj": sd.linear(f"{block}.mlp.fc2")},
        }
    return {"params": params}


def mixer(sd: StateDict, module) -> dict:
    """timm's MLP-Mixer: norm1 and mlp_tokens mix patches, norm2 and mlp_channels channels."""
    params = {
        "stem": {"kernel": conv_kernel(sd("stem.proj.weight")), "bias": sd("stem.proj.bias")},
        "ln_final": sd.norm("norm"),
        "head": sd.linear("head"),
    }

    def mlp(name):
        return {"fc": sd.linear(f"{name}.fc1"), "proj": sd.linear(f"{name}.fc2")}

    for i in range(module.num_layers):
        block = f"blocks.{i}"
        params[f"layer_{i}"] = {
            "ln_token": sd.norm(f"{block}.norm1"),
            "token_mixing": mlp(f"{block}.mlp_tokens"),
            "ln_channel": sd.norm(f"{block}.norm2"),
            "channel_mixing": mlp(f"{block}.mlp_channels"),
        }
    return {"params": params}


def resnet(sd: StateDict, module) -> dict:
    """timm's or torchvision's ResNet: layer{s}.{b}.conv{n}/bn{n} and downsample.0/1 are
    archbench's {Block}_{k}.Conv_{n-1}/BatchNorm_{n-1} and proj_conv/proj_bn, with blocks
    numbered across stages (k), as Flax names them; BatchNorm's running statistics go to
    "batch_stats"."""
    params, stats = {"Dense_0": sd.linear("fc")}, {}

    def conv_bn(scope: str | None, conv: str, norm: str, torch_conv: str, torch_norm: str):
        p = params.setdefault(scope, {}) if scope else params
        s = stats.setdefault(scope, {}) if scope else stats
        p[conv] = {"kernel": conv_kernel(sd(f"{torch_conv}.weight"))}
        p[norm] = {"scale": sd(f"{torch_norm}.weight"), "bias": sd(f"{torch_norm}.bias")}
        s[norm] = {"mean": sd(f"{torch_norm}.running_mean"), "var": sd(f"{torch_norm}.running_var")}

    conv_bn(None, "stem_conv", "stem_bn", "conv1", "bn1")
    block = module.block_cls.__name__
    convs = {"BasicBlock": 2, "Bottleneck": 3}[block]
    k = 0
    for stage, blocks in enumerate(module.stage_sizes, start=1):
        for b in range(blocks):
            scope, src = f"{block}_{k}", f"layer{stage}.{b}"
            for n in range(convs):
                conv_bn(
                    scope, f"Conv_{n}", f"BatchNorm_{n}", f"{src}.conv{n + 1}", f"{src}.bn{n + 1}"
                )
            if sd.key(f"{src}.downsample.0.weight"):  # a projection shortcut (option B)
                conv_bn(scope, "proj_conv", "proj_bn", f"{src}.downsample.0", f"{src}.downsample.1")
            k += 1
    return {"params": params, "batch_stats": stats}


# arch -> (the prefixes its reference puts before the names above, the mapping)
FAMILIES: dict[str, tuple[tuple[str, ...], Callable[[StateDict, object], dict]]] = {
    "gpt": (("transformer.",), gpt),
    "encoder": (("bert.",), encoder),
    "llama": (("model.",), llama),
    "moe": (("model.",), moe),
    "mamba": (("backbone.",), mamba),
    "vit": ((), vit),
    "mixer": ((), mixer),
    "resnet": ((), resnet),
}


def from_reference(arch: str, state_dict: Mapping[str, np.ndarray], module) -> dict:
    """The variables of archbench's `module` holding a reference checkpoint's weights.

    Args:
      arch: one of FAMILIES (gpt, encoder, llama, moe, mamba, vit, mixer, resnet).
      state_dict: the reference's names -> arrays (see the module docstring for which
        implementation each family reads).
      module: the archbench module (its layer and head counts say what to read).
    Returns:
      {"params": ...} (and "batch_stats" for resnet) as NumPy arrays of module.param_dtype,
      for `module.apply(variables, x)`.
    Raises:
      KeyError: a parameter the state dict lacks; ValueError: an entry left over, or an
      output head that is not tied where the family ties it.
    """
    if arch not in FAMILIES:
        raise KeyError(f"no reference conversion for {arch!r}; valid: {', '.join(FAMILIES)}")
    prefixes, convert = FAMILIES[arch]
    sd = StateDict(state_dict, prefixes, module.param_dtype)
    return sd.finish(convert(sd, module))
