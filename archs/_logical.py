"""Logical axis names: each family says what its parameters' dimensions are.

As in MaxText and `flax.linen.partitioning`, a parameter's initializer is wrapped with the
logical names of its dimensions (`nn.with_logical_partitioning`), so `module.init` returns
them boxed beside the values; `registry.init_variables` unboxes them, and
`registry.logical_axes` reads them from shapes alone. A model never names a mesh axis: the
sharding strategies (archbench.engine.sharding) are tables from these names to mesh axes.
The names, shared by every family:

  embed     the model's width: the residual stream, a dense stack's input and output
  mlp       the units a block expands the width to: an MLP's hidden layer, SwiGLU's gate and
            up projections, a Mamba mixer's inner channels
  heads     attention query heads         kv_heads  key/value heads (grouped-query attention)
  kv        one head's features (head_dim)
  vocab     the token vocabulary          classes   a classifier's outputs
  expert    a Mixture of Experts' stacked experts
  conv_in   a convolution's input channels; conv_out its output channels
  gates     a recurrent cell's gate pre-activations; hidden its state
  None      a dimension with no name worth mapping (a convolution window, positions)

A dense layer pairs names so that a strategy can read Megatron's column and row parallelism
off them: (embed, mlp) then (mlp, embed), (embed, heads, kv) then (heads, kv, embed).
"""

import contextlib
import contextvars
from collections.abc import Callable

import flax.linen as nn
import jax
from flax.linen.linear import default_kernel_init

from archbench.archs import _matmul

Initializer = Callable
Names = tuple[str | None, ...]

ZEROS, ONES = nn.initializers.zeros_init(), nn.initializers.ones_init()


def named(init: Initializer, *names: str | None) -> Initializer:
    """`init` whose parameter carries the logical names of its dimensions, one per dimension."""
    return nn.with_logical_partitioning(init, names)


_BATCH_SHARDING: contextvars.ContextVar = contextvars.ContextVar("batch_sharding", default=None)


def batch_split(x):
    """`x`, an activation whose first dimension is the batch, kept split as the batch is while
    a sharding strategy is in force (`split_batches_as`), so that XLA gathers the weights an
    FSDP step needs rather than the batch. The families mark the residual stream at each
    block's entry and exit. Outside `split_batches_as`: `x` itself."""
    sharding = _BATCH_SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


@contextlib.contextmanager
def split_batches_as(sharding):
    """While tracing a model: every `batch_split` activation is constrained to `sharding`, a
    jax.sharding.NamedSharding whose spec splits the leading dimension (the rest whole).
    Parameters are left to their own shardings, unlike flax's logical rules, which would
    constrain every named parameter too."""
    token = _BATCH_SHARDING.set(sharding)
    try:
        yield
    finally:
        _BATCH_SHARDING.reset(token)


def dense(
    inputs: Names,
    outputs: Names,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = ZEROS,
) -> dict:
    """kernel_init, bias_init and dot_general for an nn.Dense or nn.DenseGeneral: the kernel
    is (*inputs, *outputs), the bias (*outputs), the product on 2-D operands (_matmul).
    Splat into the layer: nn.Dense(n, **dense(...))."""
    return {
        "kernel_init": named(kernel_init, *inputs, *outputs),
        "bias_init": named(bias_init, *outputs),
        "dot_general": _matmul.dot_general,
    }


def hidden_layers(count: int) -> list[str | None]:
    """The names of a dense stack's inputs and hidden units: None (a flattened input), then
    mlp, embed, mlp, ...: consecutive layers pair as Megatron's column- and row-parallel
    halves, and the head reads the last name."""
    return [None, *(("mlp", "embed")[i % 2] for i in range(count))]


def conv(
    inputs: str | None,
    outputs: str | None,
    window: int = 2,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = ZEROS,
) -> dict:
    """kernel_init and bias_init for a convolution's (*window, in, out) kernel and (out,) bias."""
    return {
        "kernel_init": named(kernel_init, *(None,) * window, inputs, outputs),
        "bias_init": named(bias_init, outputs),
    }


def norm(axis: str | None, scale_init: Initializer = ONES, bias_init: Initializer = ZEROS):
    """scale_init and bias_init of a normalisation (LayerNorm, BatchNorm) over `axis`."""
    return {"scale_init": named(scale_init, axis), "bias_init": named(bias_init, axis)}
