"""One cell's program: its state and batch placed, its step lowered and compiled ahead of
time (each timed), and what XLA's cost and memory analyses say about it.

`compile_cell` is shared by measuring (archbench.engine.measure, which then runs the program)
and compiling only (archbench.engine.aot, from shapes alone).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import optax

from archbench import archs
from archbench.engine import analysis, jaxpr_cost, sharding
from archbench.engine.cell import Cell, batch_shards, sequence_length
from archbench.engine.plan import Plan, plan_of
from archbench.engine.timing import lower_and_compile
from archbench.train.steps import (
    create_train_state,
    jit_train_step,
    predict,
    synthetic_batch,
)

LEARNING_RATE = 1e-3

jit_predict = jax.jit(predict)


def _state_and_batch(plan: Plan, devices, abstract: bool = False):
    """The train state and a batch, each created in place with the cell's sharding strategy.

    The state's shardings come from its shapes alone (jax.eval_shape), and `init` is jitted
    with them as out_shardings (one program with the batch's): under fsdp no device ever
    holds the whole state. With `abstract`, both are jax.ShapeDtypeStructs carrying those
    shardings: nothing is allocated, so a model larger than this host's memory can still be
    compiled. Parameters and data are drawn with the "rbg" PRNG, whose programs compile
    several times faster than threefry's (values do not matter here); the dropout key the
    train step uses is a default-implementation key, as in the fit loop.
    Raises:
      sharding.Unsupported if the strategy has no form for this model.
    """
    cell, module, inputs = plan.cell, plan.module, plan.inputs
    tx = getattr(optax, cell.optimizer)(LEARNING_RATE) if cell.mode == "train" else optax.identity()
    placement = sharding.layout(cell.sharding, devices, cell.mesh)

    def init(key):
        state = create_train_state(module, inputs, tx, key)
        return state.replace(dropout_key=jax.random.key(2))

    def make_batch(key):
        return synthetic_batch(inputs, plan.spec.task, plan.num_outputs, cell.batch, key)

    key, batch_key = jax.random.key(0, impl="rbg"), jax.random.key(1, impl="rbg")
    shapes = jax.eval_shape(init, key)
    shardings = placement.state(shapes, archs.logical_axes(module, inputs))
    if abstract:
        place = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
        batch_shapes = jax.eval_shape(make_batch, batch_key)
        batch = jax.tree.map(lambda a: place(a, placement.batch), batch_shapes)
        return jax.tree.map(place, shapes, shardings), batch

    def state_and_batch(key, batch_key):  # one program: a second costs a compile of its own
        return init(key), make_batch(batch_key)

    return jax.jit(state_and_batch, out_shardings=(shardings, placement.batch))(key, batch_key)


def _nbytes(tree) -> int:
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def _state_facts(cell: Cell, state) -> dict:
    """The optimizer and the bytes of the state it keeps, all devices together (train cells;
    None for the others): what Adafactor's factored moments save over Adam's two full ones."""
    if cell.mode != "train":
        return {"optimizer": None, "opt_state_bytes": None, "opt_state_bytes_per_param": None}
    params = sum(math.prod(a.shape) for a in jax.tree.leaves(state.params))
    opt_bytes = _nbytes(state.opt_state)
    return {
        "optimizer": cell.optimizer,
        "opt_state_bytes": opt_bytes,
        "opt_state_bytes_per_param": opt_bytes / params if params else None,
    }


def _collective_facts(compiled) -> dict:
    """The collectives XLA put into the compiled step: totals, and per kind."""
    found = analysis.collectives(compiled.as_text() or "")
    return {
        "collective_count": sum(c["count"] for c in found.values()),
        "collective_bytes": sum(c["bytes"] for c in found.values()),
        "collectives": {op: c for op, c in found.items() if c["count"]},
    }


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _cost_facts(plan: Plan, step_fn, args, lowered, compiled):
    """FLOPs and bytes of one global step (all devices together), and the FLOPs one device
    executes (device_flops_per_step: the partitioned program's own count, which repeats a
    replicated optimizer update on every device; a global count / devices where the step is
    counted unrolled, before partitioning). A module with an `unroll`
    field (the recurrent families pass it to lax.scan) is lowered again with unroll = sequence
    length, so every time step is counted; that lowering is analysed before XLA's fusion, so
    its bytes are an upper bound ("xla-unrolled-prefusion")."""
    cell, module = plan.cell, plan.module
    length = sequence_length(plan.inputs)
    if "unroll" in {f.name for f in dataclasses.fields(module)} and length is not None:
        unrolled = plan.twin(unroll=length)
        state = args[0].replace(apply_fn=unrolled.apply)
        abstract = (_abstract(state), _abstract(args[1]))
        lowered_u = step_fn.lower(*abstract)
        stage = lowered_u if lowered_u.cost_analysis() is not None else lowered_u.compile()
        flops, accessed = analysis.cost(stage)
        device_flops = None if flops is None else flops / cell.devices  # a global count
        source = "xla-unrolled"
        bytes_source = "xla-unrolled-prefusion" if stage is lowered_u else "xla-unrolled"
        loops = analysis.loop_undercount(step_fn.trace(*abstract).jaxpr)
    else:
        flops, accessed = analysis.cost(compiled)
        device_flops = flops  # the compiled program is one device's
        if cell.devices > 1:
            # The partitioned executable is one device's program, with the replicated optimizer
            # update repeated on every device. FLOPs: the unpartitioned step's (the model's
            # work, the same count as on one device); bytes: every device's traffic.
            flops = analysis.unpartitioned_flops(lowered, step_fn, args)
            accessed = None if accessed is None else accessed * cell.devices
        source, bytes_source = "xla", "xla"
        loops = analysis.loop_undercount(step_fn.trace(*args).jaxpr)
    model_flops = flops
    if (
        cell.remat not in (None, "none")
        or plan.spec.model_flops_fields
        or _other_implementation(plan)
    ):
        unroll = {"unroll": length} if source == "xla-unrolled" else {}
        model_flops = _model_flops(plan, step_fn, args, unroll)
    return {
        "flops_per_step": flops,
        "device_flops_per_step": device_flops,
        "model_flops_per_step": model_flops,
        "bytes_per_step": accessed,
        # A loop of matmuls is left, its body counted once: the FLOPs are too low.
        "flops_source": "xla-loop-undercount" if loops else source,
        "bytes_source": bytes_source,
    }


def _other_implementation(plan: Plan) -> bool:
    """Whether the cell's implementation variant sets a field away from the family's default
    (a variant named for the default, such as Mamba's "scan", does not)."""
    if not plan.variant_fields:
        return False
    default = plan.twin(variant=None)
    return any(getattr(default, k) != getattr(plan.module, k) for k in plan.variant_fields)


def _model_flops(plan: Plan, step_fn, args, unroll: dict) -> float | None:
    """FLOPs of the same step without rematerialisation, the model's work, which MFU counts
    (PaLM, Chowdhery et al. 2022, app. B): lowered and compiled once more from shapes alone,
    as `_cost_facts` counts the cell itself, so both counts agree when nothing is recomputed.
    It is the family's default implementation too: a variant computes the same model, but
    XLA may count its work differently (im2col's matmul multiplies the padding's zeros, which
    XLA's count of a convolution leaves out), or the twin the family's spec names for counting
    (`ArchSpec.model_flops_fields`: a Mixture of Experts with exactly k experts per token)."""
    remat = {} if plan.cell.remat is None else {"remat": "none"}
    twin = plan.spec.model_flops_fields  # {} but where XLA's count misleads
    plain = plan.twin(variant=None, **remat, **unroll, **twin)
    state = args[0].replace(apply_fn=plain.apply)
    abstract = (_abstract(state), _abstract(args[1]))
    lowered = step_fn.lower(*abstract)
    if unroll:
        stage = lowered if lowered.cost_analysis() is not None else lowered.compile()
        return analysis.cost(stage)[0]
    if plan.cell.devices > 1:
        return analysis.unpartitioned_flops(lowered, step_fn, abstract)
    return analysis.cost(lowered.compile())[0]


def compile_cell(plan: Plan | Cell, devices, abstract: bool = False, count: bool = True):
    """Lower and compile a resolved cell's step on `devices`, timing both; raises on any failure.

    Args:
      plan: what to compile (archbench.engine.plan.Plan; a Cell is resolved here).
      devices: the devices of its mesh.
      abstract: compile from jax.ShapeDtypeStructs alone, allocating nothing.
      count: count the step's FLOPs and bytes (XLA's cost analysis, the model's FLOPs, the
        jaxpr's counts: for a cell on several devices or with a twin to count, a few more
        traces and lowerings); False for a caller that needs only the executable and its
        memory, such as the search for the largest batch that fits.
    Returns:
      (the compiled step, its arguments (state, batch or inputs), facts: lower_s, compile_s,
      the memory analysis, the batch sharding and the collectives, and with `count` the cost
      analyses).
    """
    plan = plan_of(plan, devices if abstract else None)
    if plan.module is None:
        raise plan.error
    cell = plan.cell
    state, batch = _state_and_batch(plan, devices, abstract)
    if cell.mode == "train":
        step_fn, args = jit_train_step, (state, batch)
    else:
        step_fn, args = jit_predict, (state, batch["x"])
    # A cached trace or executable of an earlier cell of the same shapes would make lower_s and
    # compile_s lie: evict this function's caches (not the process's, which other code uses).
    step_fn.clear_cache()
    with sharding.layout(cell.sharding, devices, cell.mesh).activations():
        lowered, compiled, lower_s, compile_s, cache = lower_and_compile(step_fn, *args)
    facts = {
        "lower_s": lower_s,
        "compile_s": compile_s,
        "compile_cache": cache,
        **(_cost_facts(plan, step_fn, args, lowered, compiled) if count else {}),
        **analysis.compiled_memory(compiled),
        "batch_sharding": str(jax.tree.leaves(args[1])[0].sharding.spec),
        "batch_per_device": cell.batch // batch_shards(cell),
        **_collective_facts(compiled),
        **_state_facts(cell, state),
    }
    if count:  # traced after compiling, so that lower_s and compile_s are the step's own
        facts.update(jaxpr_cost.facts(plan, step_fn, args, facts))
    return compiled, args, facts
