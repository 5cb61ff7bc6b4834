"""The project's one train step, its eval step and the train state they share.

`train_step` is what the benchmark times and what the fit loop runs: there is no second copy.
A batch is a dict {"x": inputs, "y": integer labels}; labels are (B,) for a classifier and
(B, T) for a language or seq2seq model (next-token targets).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from archbench.archs.inputs import InputSpec
from archbench.archs.registry import init_variables

Batch = dict[str, Any]


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics (empty dict if none) and a dropout key."""

    batch_stats: Any = struct.field(default_factory=dict)
    dropout_key: jax.Array | None = None


def create_train_state(
    module: nn.Module, input_spec: InputSpec, tx: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    """Initialise parameters and optimizer state for `module` on inputs of `input_spec`.

    Args:
      module: the Linen module.
      input_spec: the shape of one example.
      tx: the optax optimizer.
      key: PRNG key; parameters and dropout draw from independent splits of it.
    Returns:
      A TrainState at step 0.
    """
    init_key, dropout_key = jax.random.split(key)
    variables = init_variables(module, input_spec, init_key)
    return TrainState.create(
        apply_fn=module.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        dropout_key=dropout_key,
    )


def first_argmax(logits: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (the first index of the maximum) as two plain reductions:
    the maximum, then the smallest index that holds it.

    XLA:CPU runs jnp.argmax as one reduction over (value, index) pairs: 18.2 ms on one thread
    for llama small's (32, 128, 1024) logits, against 2.4 ms for these two (`python -m
    archbench.checks.cpu_forms`), about 6% of that train step. The same index for every row
    without a NaN; a row with a NaN gets the row's length (no class), where argmax gives the
    NaN's index. Generation picks its greedy tokens with it too (archbench.engine.generate):
    a decode step 15 to 25% faster on one thread (docs/performance.md, "The greedy token's
    argmax").
    """
    top = logits.max(-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == top, index, logits.shape[-1]), -1)


def loss_and_metrics(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy and accuracy over every labelled position, in float32."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (first_argmax(logits) == labels).mean()
    return loss, {"loss": loss, "accuracy": accuracy}


def _variables(state: TrainState, params) -> dict:
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    """One optimizer step on `batch`.

    Args:
      state: the train state (donated by the jitted callers).
      batch: {"x": inputs, "y": labels}.
    Returns:
      The new state and metrics {"loss", "accuracy", "grad_norm"} of this batch, and
      "aux_loss" for a model that sows auxiliary losses.

    A model may sow auxiliary losses into the "losses" collection (`self.sow("losses", ...)`,
    e.g. a Mixture of Experts' load-balancing loss): their sum is added to the cross-entropy,
    and "loss" is that total, the loss differentiated. Eval and predict ignore them.
    """
    dropout_key = jax.random.fold_in(state.dropout_key, state.step)
    mutable = ["batch_stats", "losses"] if state.batch_stats else ["losses"]

    def loss_fn(params):
        logits, updates = state.apply_fn(
            _variables(state, params),
            batch["x"],
            train=True,
            mutable=mutable,
            rngs={"dropout": dropout_key},
        )
        loss, metrics = loss_and_metrics(logits, batch["y"])
        sown = jax.tree.leaves(updates.get("losses", {}))
        if sown:  # known at trace time: models without auxiliary losses are unchanged
            aux = sum(jnp.sum(a.astype(jnp.float32)) for a in sown)
            loss = loss + aux
            metrics = {**metrics, "loss": loss, "aux_loss": aux}
        return loss, (metrics, updates)

    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    if state.batch_stats:
        state = state.replace(batch_stats=updates["batch_stats"])
    return state, {**metrics, "grad_norm": optax.tree.norm(grads)}


def predict(state: TrainState, x) -> jax.Array:
    """Logits of the model in eval mode (no dropout, BatchNorm on running statistics)."""
    return state.apply_fn(_variables(state, state.params), x, train=False)


def eval_step(state: TrainState, batch: Batch) -> dict:
    """Loss and accuracy of `batch` in eval mode."""
    return loss_and_metrics(predict(state, batch["x"]), batch["y"])[1]


# The jitted forms every caller uses. The state is donated: its buffers are reused for the
# new state, so the caller must not touch the old one after the call.
jit_train_step = jax.jit(train_step, donate_argnums=0)
jit_eval_step = jax.jit(eval_step)


def synthetic_batch(input_spec: InputSpec, task: str, num_outputs: int, batch: int, key) -> Batch:
    """A random batch that fits `input_spec` with labels for `task`."""
    kx, ky = jax.random.split(key)
    x = input_spec.example(kx, batch)
    if task == "classify":
        y = jax.random.randint(ky, (batch,), 0, num_outputs)
    else:
        y = jax.random.randint(ky, (batch, input_spec.tokens_per_example), 0, num_outputs)
    return {"x": x, "y": y}
