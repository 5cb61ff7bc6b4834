"""Rematerialisation (activation checkpointing) of a model's repeated blocks.

A family with a `remat` field wraps each repeated block class with `block(cls, remat,
static_argnums)`. Under `jax.checkpoint` the backward pass recomputes what the policy does not
save from the block's inputs, trading FLOPs for the memory of activations. The policies are
JAX's (https://docs.jax.dev/en/latest/gradient-checkpointing.html, "Custom policies for what's
saveable"):

- "none": no wrapping; every activation the backward pass needs is kept.
- "full": `nothing_saveable`; only the block's inputs are kept, all inside it is recomputed.
- "dots": `checkpoint_dots`; the results of matrix multiplications are kept and the cheap
  elementwise work between them recomputed (MaxText's "save dots" style of policy).

Parameters do not change: the wrapped class keeps the block's name, so auto-named instances
("BasicBlock_0") and explicitly named ones have the same paths with any policy.
"""

import flax.linen as nn
import jax

POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
}
REMATS = tuple(POLICIES)


def block(cls: type[nn.Module], remat: str, static_argnums: tuple[int, ...] = ()):
    """`cls`, or `cls` whose __call__ is rematerialised with policy `remat`.

    `static_argnums`: positions of Python-valued arguments of __call__ (flags such as train or
    decode, `self` being 0), which jax.checkpoint would otherwise trace; they must be passed
    positionally, as keywords are always traced.
    """
    if remat not in POLICIES:
        raise ValueError(f"remat {remat!r} not in {REMATS}")
    if POLICIES[remat] is None:
        return cls
    wrapped = nn.remat(cls, policy=POLICIES[remat], static_argnums=static_argnums)
    wrapped.__name__ = cls.__name__  # Linen names unnamed submodules after their class
    return wrapped
