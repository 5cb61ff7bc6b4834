"""A Mixture of Experts' dispatch: N tokens, each routed to k of E SwiGLU experts, combined
by their gates. Pure functions of the tokens, the routing and the stacked expert weights, so
that every dispatch of `archs.moe.RoutedExperts` has the same parameters:

- `dense`: every expert on every token, the outputs weighted by a gate that is zero for the
  experts a token did not choose. E / k times the work; the simplest correct one, and the
  numerical reference of the others.
- `dropless`: the N k choices sorted by expert, each expert's run of rows padded to whole
  blocks (`block_rows`), and every block multiplied by its own expert's weights: a grouped
  matmul written as one batched product over blocks (the block-sparse form of MegaBlocks,
  Gale et al. 2023, with the weights gathered per block). No choice is ever dropped.
- `ragged`: the same sorted rows through `jax.lax.ragged_dot`, XLA's grouped matmul. On CPU
  XLA (jax 0.12) executes and counts it as every expert on every row, E times the work.
- `by_capacity`: GShard / Switch dispatch into C slots per expert; a choice beyond its expert's
  C slots is dropped (see `dispatch`).

Gathers and scatters move the rows; they cost no FLOPs, so XLA's count of a dispatch is its
matmuls: E N (dense), about k N plus the padding (dropless), E C (capacity).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Weights = tuple[jax.Array, jax.Array, jax.Array]  # w1, w3 (E, D, F) and w2 (E, F, D)


def capacity(tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * k * tokens / E), at least 1, at most tokens."""
    return max(1, min(tokens, math.ceil(capacity_factor * top_k * tokens / num_experts)))


def _swiglu(mm, x: jax.Array, w: Weights, up: str, down: str) -> jax.Array:
    """w2(silu(x w1) * x w3) with the einsum specs `up` (x by w1, w3) and `down` (by w2)."""
    w1, w3, w2 = w
    return mm(down, nn.silu(mm(up, x, w1)) * mm(up, x, w3), w2)


# Every group of rows (a block, an expert's slots) times its own expert's weights.
GROUPED = ("gcd,gdf->gcf", "gcf,gfd->gcd")


def dense(tokens, experts, gates, w: Weights, mm) -> jax.Array:
    """(N, D) -> (N, D): all E experts on all N tokens, combined by gates (zero if unchosen)."""
    combine = jnp.einsum("nke,nk->ne", jax.nn.one_hot(experts, w[0].shape[0]), gates)  # (N, E)
    out = _swiglu(mm, tokens, w, "nd,edf->enf", "enf,efd->end")  # (E, N, D)
    return jnp.einsum("end,ne->nd", out, combine.astype(out.dtype))


def sort_by_expert(experts: jax.Array, num_experts: int):
    """The N k routing choices (token-major: choice j is token j // k's (j % k)-th) sorted by
    expert. Returns order (N k,): the choice at each sorted row, the chosen expert of each
    sorted row, and group sizes (E,) int32: rows per expert."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return order, flat[order], sizes


def _unsort(rows: jax.Array, order: jax.Array, gates: jax.Array) -> jax.Array:
    """Sorted rows (N k, D) back to their choices, combined by the gates: (N, D)."""
    n, k = gates.shape
    back = jnp.zeros_like(order).at[order].set(jnp.arange(n * k, dtype=order.dtype))
    return jnp.einsum("nkd,nk->nd", rows[back].reshape(n, k, -1), gates.astype(rows.dtype))


def ragged(tokens, experts, gates, w: Weights, mm) -> jax.Array:
    """(N, D) -> (N, D): the sorted rows through jax.lax.ragged_dot, one group per expert."""
    del mm  # ragged_dot takes preferred_element_type itself
    order, _, sizes = sort_by_expert(experts, w[0].shape[0])
    x = tokens[order // experts.shape[1]]  # (N k, D)
    w1, w3, w2 = w
    dot = lambda a, b: jax.lax.ragged_dot(a, b, sizes, preferred_element_type=a.dtype)  # noqa: E731
    rows = dot(nn.silu(dot(x, w1)) * dot(x, w3), w2)  # (N k, D)
    return _unsort(rows, order, gates)


# What gathering one expert's weights for a block costs, in rows of that block's matmuls: on
# this CPU, a weight read against the 2 b multiply-adds per weight of a block of b rows.
WEIGHT_ROWS = 16


def num_blocks(choices: int, num_experts: int, rows: int) -> int:
    """Blocks of `rows` that hold any routing of N k choices to E experts: each expert's g_e
    rows take ceil(g_e / b) blocks, at most (N k + E (b - 1)) / b in all."""
    return (choices + num_experts * (rows - 1)) // rows


def block_rows(choices: int, num_experts: int) -> int:
    """Rows per block b: the power of two that minimises the work of all the blocks, rows
    computed plus weights gathered, num_blocks * (b + WEIGHT_ROWS). Small blocks pad little
    but gather an expert's weights often; large ones the reverse. N k = 8192 of 8 experts
    (moe small, B = 32): 128 rows, 71 blocks; a decoding step of 32 tokens: 16 rows, 11
    blocks; of one token: 1 row, 2 blocks, exactly its two experts."""
    sizes = [2**i for i in range(max(1, choices).bit_length() + 1)]
    cost = lambda b: num_blocks(choices, num_experts, b) * (b + WEIGHT_ROWS)  # noqa: E731
    return min(sizes, key=cost)


def dropless(tokens, experts, gates, w: Weights, mm) -> jax.Array:
    """(N, D) -> (N, D): sorted rows in blocks of b, every block times its expert's weights.

    The blocks are as many as any routing needs (`num_blocks`, a static shape); the unused
    ones are zero rows of expert E - 1, whose outputs are never read. The weights gathered per block
    are gathered again in the backward pass rather than kept.
    """
    (n, k), e = experts.shape, w[0].shape[0]
    b = block_rows(n * k, e)
    count = num_blocks(n * k, e, b)
    order, sorted_expert, sizes = sort_by_expert(experts, e)
    blocks = (sizes + b - 1) // b  # (E,) blocks per expert
    first_block = jnp.cumsum(blocks) - blocks  # (E,) each expert's first block
    first_row = jnp.cumsum(sizes) - sizes  # (E,) each expert's first sorted row
    rank = jnp.arange(n * k) - first_row[sorted_expert]  # (N k,) the row within its group
    dest = first_block[sorted_expert] * b + rank  # (N k,) the padded row of each sorted row
    token = jnp.full((count * b,), n, jnp.int32).at[dest].set((order // k).astype(jnp.int32))
    padded = jnp.concatenate([tokens, jnp.zeros((1, tokens.shape[1]), tokens.dtype)])
    x = padded[token].reshape(count, b, -1)  # (blocks, b, D); padding rows are zeros
    owner = jnp.searchsorted(jnp.cumsum(blocks), jnp.arange(count), side="right")
    owner = jnp.minimum(owner, e - 1)  # (blocks,) the expert of each block
    out = _blocks(mm, x, w, owner).reshape(count * b, -1)  # (blocks b, D)
    return _unsort(out[dest], order, gates)


def _blocks(mm, x, w: Weights, owner):
    """SwiGLU of every block (G, b, D) by its own expert's weights, gathered (G, D, F)."""
    gathered = tuple(checkpoint_name(a[owner], "expert_weights") for a in w)
    return _swiglu(mm, x, gathered, *GROUPED)


_blocks = jax.checkpoint(
    _blocks,
    static_argnums=(0,),
    policy=jax.checkpoint_policies.save_anything_except_these_names("expert_weights"),
)


def dispatch(experts: jax.Array, num_experts: int, slots: int) -> tuple[jax.Array, jax.Array]:
    """Where each routing choice goes in the experts' (E * C) slots, and which token fills
    each slot.

    Choices are taken rank by rank (all first choices in token order, then the second ...),
    so a token's first choice is kept before any token's second (GShard sec. 2.2).

    Args:
      experts: (N, k) chosen experts.
    Returns:
      slot (k, N): the flat slot e * C + position of each choice, or E * C if dropped;
      token (E * C,): the token in each slot, or N for an empty slot.
    """
    n, k = experts.shape
    flat = experts.T.reshape(-1)  # (k N,) rank-major
    onehot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)  # (k N, E)
    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # (k N,)
    slot = jnp.where(position < slots, flat * slots + position, num_experts * slots)
    owner = jnp.tile(jnp.arange(n, dtype=jnp.int32), k)  # (k N,) the token of each choice
    token = jnp.full((num_experts * slots,), n, jnp.int32).at[slot].set(owner, mode="drop")
    return slot.reshape(k, n), token


def by_capacity(tokens, experts, gates, w: Weights, mm, capacity_factor: float) -> jax.Array:
    """(N, D) -> (N, D): C slots per expert filled by gathers, the E experts as one batched
    (E, C, D) x (E, D, F) product, a dropped choice reading a zero row."""
    (n, k), (e, width) = experts.shape, (w[0].shape[0], tokens.shape[1])
    slots = capacity(n, e, k, capacity_factor)
    slot, token = dispatch(experts, e, slots)  # (k, N), (E C,)
    padded = jnp.concatenate([tokens, jnp.zeros((1, width), tokens.dtype)])  # (N + 1, D)
    x = padded[token].reshape(e, slots, width)  # (E, C, D); empty slots are zeros
    out = _swiglu(mm, x, w, *GROUPED).reshape(e * slots, width)  # (E C, D)
    out = jnp.concatenate([out, jnp.zeros((1, width), out.dtype)])  # (E C + 1, D)
    picked = out[slot]  # (k, N, D); a dropped choice reads the zero row
    return jnp.einsum("knd,nk->nd", picked, gates.astype(out.dtype))
