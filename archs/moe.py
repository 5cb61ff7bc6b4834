"""Mixture-of-Experts decoder (Mixtral, Jiang et al. 2024): Llama with routed SwiGLU experts.

The model is `archs.llama.Llama` itself with its blocks' MLP replaced by `RoutedExperts`: a
bias-free router Dense D -> E picks each token's top k experts (token choice), their outputs
are summed with the softmax of the k chosen logits as weights (Mixtral renormalises over the
selected k), and the residual carries the rest. Attention, norms, RoPE and whatever Llama
gains later are shared with the `llama` family.

How tokens reach their experts is the `dispatch` field, and each dispatch is an
implementation variant of the same name (`--variant`; same parameters; archs/_experts.py):

- "dropless", the default, as Mixtral's reference code, serving engines and MaxText's sparse
  path: no routing choice is ever dropped, so a sequence's logits never depend on the other
  sequences of its batch. The N k choices are sorted by expert and each expert's rows padded
  to whole blocks; every block is multiplied by its own expert's weights (gathered per block,
  gathered again in the backward pass rather than kept): a grouped matmul as one batched
  product. The block size trades padding against weight gathers (`_experts.block_rows`:
  128 rows for moe small's N k = 8192, one row for a single token's decoding step); XLA's
  FLOPs are those of all the blocks, the padding included.
- "ragged": the same sorted rows through `jax.lax.ragged_dot`, the grouped matmul XLA has for
  GPUs and TPUs. On CPU XLA (jax 0.12) executes it as every expert on every row and counts it
  so (ragged_dot of 64 x 32 rows by 4 experts of 32 x 48 reports 819,212 FLOPs, 4 * 2 * 64 *
  32 * 48, whatever the groups); "dropless" was faster on this CPU (docs/performance.md).
- "capacity": GShard / Switch dispatch (Lepikhin et al. 2021; Fedus et al. 2022 sec. 2.2),
  the behaviour before issue 22: each expert has C = ceil(capacity_factor * k * N / E) slots
  (at most N), tokens fill them in order, every token's first choice before any second
  choice, and a choice beyond its expert's C slots is dropped (that expert adds nothing to
  the token): a token's output then depends on its batch-mates. capacity_factor = E / k
  gives C = N and drops nothing; at the default 1.25 a small batch drops many choices.
- "dense": every expert on every token, each weighted by its gate, zero for the experts a
  token did not choose: E / k times the experts' work, the simplest correct dispatch and the
  numerical reference of the others (tests/test_moe_dispatch.py).

Rows move by gathers, which cost no FLOPs (a one-hot dispatch einsum would cost N * E * C * D
multiply-adds each way). So XLA's FLOPs, the record's executed `flops_per_step`, differ by
dispatch; the model's work, `model_flops_per_step` (MFU), is counted on the twin
`MODEL_FLOPS_TWIN` for every dispatch: capacity at factor 1.0, whose E * ceil(k N / E) slots
are the k experts of every token.

Training adds the load-balancing loss of Switch (eq. 4), sown into the "losses" collection
(`train.steps.train_step` adds every sown loss to the cross-entropy). The dispatch applies
in every mode, decoding included (one token per sequence a step); the router and its
softmax run in float32 (Switch's "selective precision", sec. 2.4) whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _experts, _logical
from archbench.archs._transformer import ATTENTION_VARIANTS
from archbench.archs.inputs import InputSpec
from archbench.archs.llama import INIT, Initializer, Llama
from archbench.archs.registry import ArchSpec, Size, count_params, register

# How a block's tokens reach their experts (archs/_experts.py): each is also the implementation
# variant of the same name (same parameters, same outputs; "capacity" only while no choice
# overflows its expert's slots).
DISPATCHES = {
    "dropless": _experts.dropless,
    "ragged": _experts.ragged,
    "capacity": _experts.by_capacity,
    "dense": _experts.dense,
}
DISPATCH_VARIANTS = {name: {"dispatch": name} for name in DISPATCHES}
# The twin whose XLA FLOP count is the model's work (model_flops_per_step, which MFU counts):
# every token's k experts and no more. C = ceil(k N / E) slots per expert hold exactly the
# N k choices (the dispatch drops some, but the count is of slots); XLA counts the dropless
# dispatch's block padding, and on CPU ragged_dot as every expert on every row.
MODEL_FLOPS_TWIN = {"dispatch": "capacity", "capacity_factor": 1.0}


def route(logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """Token-choice top-k: each token's k largest logits' experts, and their softmax weights.

    Args:
      logits: (N, E) router logits.
    Returns:
      experts (N, k) int32, best first, and gates (N, k) float32 summing to 1 over k.
    """
    top, experts = jax.lax.top_k(logits.astype(jnp.float32), top_k)  # (N, k) each
    return experts, jax.nn.softmax(top, axis=-1)


def load_balance_loss(logits: jax.Array, experts: jax.Array) -> jax.Array:
    """Switch Transformer's auxiliary loss, eq. 4: E * sum_i f_i * P_i.

    f_i is the fraction of the N * k routing choices that picked expert i (counted before any
    capacity drop, and not differentiable), P_i the mean router probability of expert i
    (softmax over all E logits). Both are uniform, 1 / E, when the load is balanced, and the
    loss is then 1. (Hugging Face's Mixtral code counts f_i per token, without the 1 / k,
    which scales this by k.)

    Args:
      logits: (N, E) router logits; experts: (N, k) the chosen experts.
    """
    num_experts = logits.shape[-1]
    chosen = jax.nn.one_hot(experts, num_experts, dtype=jnp.float32)  # (N, k, E)
    fraction = chosen.mean(axis=(0, 1))  # (E,) f_i, summing to 1
    prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).mean(axis=0)  # (E,) P_i
    return num_experts * jnp.sum(fraction * prob)


class Experts(nn.Module):
    """The E SwiGLU experts' stacked weights, in the compute dtype: w1, w3 (E, D, F) and w2
    (E, F, D). Every dispatch multiplies by these same parameters."""

    num_experts: int
    hidden: int
    kernel_init: Initializer = INIT
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, width: int) -> _experts.Weights:
        e, hidden = self.num_experts, self.hidden
        # N(0, 0.02) like every Llama matrix (Hugging Face's MixtralConfig: initializer_range).
        up = _logical.named(self.kernel_init, "expert", "embed", "mlp")
        down = _logical.named(self.kernel_init, "expert", "mlp", "embed")
        w1 = self.param("w1", up, (e, width, hidden), self.param_dtype)
        w3 = self.param("w3", up, (e, width, hidden), self.param_dtype)
        w2 = self.param("w2", down, (e, hidden, width), self.param_dtype)
        return tuple(w.astype(self.dtype) for w in (w1, w3, w2))


class RoutedExperts(nn.Module):
    """Top-k routed SwiGLU experts in place of a block's MLP: (B, T, D) -> (B, T, D).

    Built by `LlamaBlock` as mlp(hidden, kernel_init=..., dtype=..., param_dtype=...); the
    routing fields come from `MoE` through `Routed`.
    """

    hidden: int  # F of every expert
    num_experts: int = 8
    top_k: int = 2
    dispatch: str = "dropless"  # one of DISPATCHES: how tokens reach their experts
    capacity_factor: float = 1.25  # dispatch "capacity": slots over the balanced share k N / E
    aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the training loss
    kernel_init: Initializer = INIT
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape, width = x.shape, x.shape[-1]
        tokens = x.reshape(-1, width)  # (N, D)
        # The router in float32 (Switch's "selective precision").
        # The router's (D, E) kernel names no expert axis: every device routes every token.
        logits = nn.Dense(
            self.num_experts, use_bias=False,
            **_logical.dense(("embed",), (None,), self.kernel_init),
            dtype=jnp.float32, param_dtype=self.param_dtype, name="router",
        )(tokens)  # (N, E)  # fmt: skip
        experts, gates = route(logits, self.top_k)  # (N, k) each
        self.sow("losses", "load_balance", self.aux_loss_coef * load_balance_loss(logits, experts))
        w = Experts(
            self.num_experts, self.hidden, self.kernel_init, self.dtype, self.param_dtype,
            name="experts",
        )(width)  # fmt: skip
        mm = functools.partial(jnp.einsum, preferred_element_type=self.dtype)
        args = (tokens.astype(self.dtype), experts, gates, w, mm)
        if self.dispatch == "capacity":
            y = _experts.by_capacity(*args, capacity_factor=self.capacity_factor)  # (N, D)
        else:
            y = DISPATCHES[self.dispatch](*args)  # (N, D)
        return y.reshape(shape).astype(self.dtype)  # (B, T, D)


@dataclasses.dataclass(frozen=True)
class Routed:
    """The block's MLP factory: RoutedExperts with these routing fields. A frozen dataclass,
    not a functools.partial, so that two equal MoE modules compare and hash equal (jax.jit
    caches on them)."""

    num_experts: int
    top_k: int
    dispatch: str
    capacity_factor: float
    aux_loss_coef: float

    def __call__(self, hidden: int, **kwargs) -> RoutedExperts:
        return RoutedExperts(hidden, *dataclasses.astuple(self), **kwargs)


class MoE(Llama):
    """Llama whose every block's MLP is `RoutedExperts` of E experts of width `mlp_dim`.

    The `mlp` field is set from the routing fields below (any given one is replaced).
    """

    num_experts: int = 8
    top_k: int = 2
    # How tokens reach their experts (DISPATCHES; the variants of the same name). Mixtral's
    # released code drops no token, and neither does "dropless".
    dispatch: str = "dropless"
    # Dispatch "capacity" only: slots per expert over the balanced share k * N / E (Switch's
    # Table 1 compares 1.0, 1.25 and 2.0); E / k gives every expert N slots, dropping none.
    capacity_factor: float = 1.25
    # Switch's alpha = 10^-2 (sec. 2.2). Hugging Face's MixtralConfig defaults to 10^-3 with
    # f_i per token, k times ours (see load_balance_loss): 2 * 10^-3 in this convention.
    aux_loss_coef: float = 0.01

    def __post_init__(self):
        if self.dispatch not in DISPATCHES:
            valid = ", ".join(DISPATCHES)
            raise ValueError(f"unknown MoE dispatch {self.dispatch!r}; valid: {valid}")
        routing = (
            self.num_experts, self.top_k, self.dispatch, self.capacity_factor, self.aux_loss_coef
        )  # fmt: skip
        object.__setattr__(self, "mlp", Routed(*routing))
        super().__post_init__()

    def active_param_count(self, params) -> int:
        """Parameters one token uses: all but (E - k) / E of every expert weight."""
        total = count_params(params)
        experts = [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if any(getattr(key, "key", None) == "experts" for key in path)
        ]
        idle = count_params(experts) * (self.num_experts - self.top_k) // self.num_experts
        return total - idle


def _size(layers, width, heads, kv_heads, mlp, vocab, seq, experts, top_k=2, max_len=None,
          theta=1e4, **kw):  # fmt: skip
    config = {
        "vocab_size": vocab, "num_layers": layers, "width": width, "num_heads": heads,
        "num_kv_heads": kv_heads, "mlp_dim": mlp, "max_len": max_len or seq,
        "rope_base": theta, "norm_eps": 1e-5, "num_experts": experts, "top_k": top_k,
    }  # fmt: skip
    return Size(config, InputSpec("tokens", (seq,), vocab), **kw)


# Parameters, with Dh = D / H, K key/value heads, E experts of width F, k of them per token:
#   2 * V * D                                   token embedding and untied output head
#   + L * (2 * D * D + 2 * D * K * Dh           query and output; key and value
#          + D * E                              router
#          + E * 3 * D * F                      the experts' w1, w3 (D x F) and w2 (F x D)
#          + 2 * D)                             the block's two RMSNorm scales
#   + D                                         final RMSNorm
# Mixtral-8x7B (V 32,000, D 4,096, L 32, H 32, K 8, Dh 128, F 14,336, E 8): 262,144,000
#   + 32 * (33,554,432 + 8,388,608 + 32,768 + 8 * 176,160,768 + 8,192) + 4,096
#   = 46,702,792,704 parameters. Active per token (k = 2): minus 32 * 6 * 176,160,768
#   = 33,822,867,456 idle expert weights, 12,879,925,248. Both are the paper's "47B" and
#   "13B" (sec. 2) and the exact counts of the released checkpoint.
# The 8x7b input is 4,096 tokens (the rotary tables cover the 32,768-token context): at
# 32,768, XLA's attention would hold B * H * T^2 float32 scores, 128 GiB a layer at B = 1.
MIXTRAL = (
    "Jiang et al. 2024, Mixtral of Experts (arXiv:2401.04088) sec. 2, Table 1; config.json "
    "and exact tensor count of the released mistralai/Mixtral-8x7B-v0.1"
)

SIZES = {
    "tiny": _size(2, 32, 4, 2, mlp=64, vocab=128, seq=16, experts=4),
    "small": _size(2, 128, 4, 2, mlp=256, vocab=1024, seq=128, experts=8),
    "8x7b": _size(
        32, 4096, 32, 8, mlp=14336, vocab=32000, seq=4096, experts=8, max_len=32768,
        theta=1e6, canonical="Mixtral-8x7B", published_params=46_702_792_704,
        published_active_params=12_879_925_248, source=MIXTRAL,
    ),
}  # fmt: skip

register(
    ArchSpec(
        name="moe",
        family="Mixture of Experts",
        module=MoE,
        task="lm",
        sizes=SIZES,
        # Llama's attention computed each way, and the experts' dispatches.
        variants={**ATTENTION_VARIANTS, **DISPATCH_VARIANTS},
        model_flops_fields=MODEL_FLOPS_TWIN,
    )
)
