"""An independent count beside XLA's: a step's FLOPs and bytes read from its jaxpr.

`jax.experimental.roofline` walks a jaxpr with one rule per primitive: the FLOPs of every
operation (a dot_general's 2*M*N*K, an elementwise op's one per element), the bytes each
operation reads and writes were nothing fused ("unfused"), and, inside a shard_map over a
mesh, the bytes each collective moves over the mesh's links. XLA's cost analysis counts the
optimized, fused HLO instead; the two counts side by side say what XLA's fusion saves and
where either count has a blind spot.

Two programs are counted, both traced (never compiled):
- the global step, the function the cell compiles (`jax.make_jaxpr` of the jitted step, its
  trace already cached by the lowering): `jaxpr_flops`, `jaxpr_matmul_flops` and
  `jaxpr_unfused_bytes`, all devices together as `flops_per_step` is;
- for a cell on several devices whose strategy only splits the batch and fills arrays (dp,
  fsdp), one device's program: the same train step (or predict) under `jax.shard_map` over the
  cell's mesh with the state's and the batch's own partition specs, each variable gathered
  whole (`all_gather`) where the model applies it. JAX's autodiff then writes the collectives
  a data-parallel step needs into the jaxpr itself: the gradient of a replicated parameter is
  summed over the batch's devices (all-reduce), that of a gathered one reduce-scattered back
  to its shard; the optimizer updates each device's shard. `jaxpr_flops_per_device` and
  `jaxpr_comm_bytes` (the bytes one device sends, by jax's ring model, over every mesh axis).
  A strategy with a table (tp, ep) splits work inside the layers, where the global jaxpr has
  no collective to count: those figures are None and `jaxpr_reason` says so.

jax's rules count a scan's body once; `count` adds its other trip counts, so a recurrent
model's count covers every time step. Work the rules count as zero (a while loop's or a cond's
body; tanh, reduce_max, argmax, reduce_window, ragged_dot and the other primitives whose rule
is jax's zero default or missing) is named in `jaxpr_uncounted`, with how many equations.
Any failure is `jaxpr_reason`: the cell's measurement never depends on this count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time

import jax
from jax.experimental import roofline
from jax.extend.core import jaxpr_as_fun

from archbench.engine.plan import Plan
from archbench.engine.sharding import PARTS, parse_strategy
from archbench.train.steps import predict, train_step

KEYS = (
    *("jaxpr_flops", "jaxpr_matmul_flops", "jaxpr_flops_per_device", "jaxpr_unfused_bytes"),
    *("jaxpr_comm_bytes", "xla_jaxpr_flops_ratio", "fusion_bytes_ratio", "jaxpr_s"),
    *("jaxpr_uncounted", "jaxpr_reason"),
)
# Work jax's rules count as zero: control flow whose bodies they skip, and any primitive whose
# rule is jax's zero default (tanh, reduce_max, argmax, reduce_window, sort, ...), but those
# that only move, reshape or relabel data.
SKIPPED_BODIES = {"while": "while", "cond": "cond"}
NO_WORK = frozenset(
    {
        *("reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "rev"),
        *("slice", "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "split"),
        *("convert_element_type", "bitcast_convert_type", "iota", "copy", "copy_p"),
        *("device_put", "reshard", "mesh_cast", "pvary", "sharding_constraint", "stop_gradient"),
        *("random_wrap", "random_unwrap", "random_seed", "optimization_barrier"),
        *("squeeze", "select_and_gather_add", "zeros_like", "pjit", "closed_call"),
    }
)
_LOGGER = "jax.experimental.roofline.roofline"
_RULES = getattr(sys.modules[_LOGGER], "_rooflines", {})  # primitive -> rule (private to jax)


@dataclasses.dataclass(frozen=True)
class Count:
    """What jax's roofline rules count in one program (one device's, under a mesh)."""

    flops: int  # every operation (the rules' unfused_flops)
    matmul_flops: int  # dot_general only (the rules' flops; a convolution is in `flops` only)
    unfused_bytes: int  # every operation's operands and results
    comm_bytes: int  # sent over the mesh's links, every axis together
    uncounted: tuple[str, ...]  # work the rules counted as zero, "primitive (equations)"


class _Unruled(logging.Handler):
    """Collects the primitives jax's roofline logs as having no rule (and keeps the log quiet)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: dict[str, int] = {}

    def emit(self, record):
        text = record.getMessage()
        if text.startswith("No roofline rule for "):
            name = text.split("\n", 1)[0].removeprefix("No roofline rule for ").split(",")[0]
            self.names[name] = self.names.get(name, 0) + 1


@contextlib.contextmanager
def _collecting():
    logger = logging.getLogger(_LOGGER)
    handler, propagate = _Unruled(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.names
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _shapes(avals):
    return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]


def _rules(closed, mesh) -> roofline.RooflineResult:
    """jax's roofline of a closed jaxpr (a shard_map in it is counted as one device's body)."""
    return roofline.roofline(jaxpr_as_fun(closed), mesh=mesh)(*_shapes(closed.in_avals))[1]


def _inner(eqn):
    """The jaxprs jax's roofline walks into (it counts the others' equations as zero)."""
    for name in ("jaxpr", "call_jaxpr"):
        if name in eqn.params:
            return [eqn.params[name]]
    return []


def _scan_rest(jaxpr, mesh) -> roofline.RooflineResult:
    """What jax's roofline leaves out of `jaxpr`: every scan's body after its first trip."""
    extra = roofline.RooflineResult.zeros()
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        if eqn.primitive.name == "scan":
            body, length = eqn.params["jaxpr"], eqn.params["length"]
            extra += (length - 1) * _rules(body, mesh) + length * _scan_rest(body, mesh)
        else:
            for inner in _inner(eqn):
                extra += _scan_rest(inner, mesh)
    return extra


def _zero_rule(eqn) -> bool:
    rule = _RULES.get(eqn.primitive)
    return getattr(rule, "__name__", "") == "standard_rule" and eqn.primitive.name not in NO_WORK


def _uncounted(jaxpr, found: dict) -> dict:
    """Equations whose work jax's rules count as zero, by primitive, at any depth."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        inner = _inner(eqn)
        if eqn.primitive.name in SKIPPED_BODIES or (not inner and _zero_rule(eqn)):
            found[eqn.primitive.name] = found.get(eqn.primitive.name, 0) + 1
        for sub in inner:
            _uncounted(sub, found)
    return found


def count(fn, *args, mesh=None, in_specs=None, out_specs=None) -> Count:
    """Count `fn(*args)` (arrays or jax.ShapeDtypeStructs) with jax's roofline rules, every
    scan's body counted once per trip. With `in_specs` and `out_specs`, `fn` is one device's
    program under jax.shard_map over `mesh`, and the count is that device's. Raises whatever
    tracing or a rule raises."""
    if in_specs is not None:
        fn = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    closed = jax.make_jaxpr(fn)(*args)
    with _collecting() as unruled:
        result = _rules(closed, mesh) + _scan_rest(closed, mesh)
    missed = {**_uncounted(closed, {}), **{k: v for k, v in unruled.items() if k not in NO_WORK}}
    return Count(
        flops=int(result.unfused_flops),
        matmul_flops=int(result.flops),
        unfused_bytes=int(result.unfused_hbm_bytes),
        comm_bytes=int(sum(result.ici_bytes.values())),
        uncounted=tuple(f"{k} ({n})" for k, n in sorted(missed.items(), key=lambda kv: -kv[1])),
    )


def _gather(x, spec):
    """The whole of a variable from its shards: all-gathered along each split dimension."""
    for dim, axes in enumerate(spec):
        if axes is not None:
            x = jax.lax.all_gather(x, axes, axis=dim, tiled=True)
    return x


def per_device_program(plan: Plan, args):
    """One device's step of a cell whose strategy splits only the batch and fills arrays:
    (fn, in_specs, out_specs, mesh), or a str saying why there is none."""
    tables = [p for p in parse_strategy(plan.cell.sharding) if PARTS[p].table]
    if tables:
        return (
            f"no per-device count: {'+'.join(tables)} splits work inside the layers, whose "
            "collectives XLA inserts (the step's jaxpr has none to count)"
        )
    state, inputs = args
    mesh = jax.tree.leaves(inputs)[0].sharding.mesh
    specs = jax.tree.map(lambda a: a.sharding.spec, (state, inputs))
    owned = {"params": specs[0].params, "batch_stats": specs[0].batch_stats}
    module = plan.module

    def apply(variables, *a, **kw):
        whole = {k: jax.tree.map(_gather, v, owned[k]) for k, v in variables.items()}
        return module.apply(whole, *a, **kw)

    def step(state, inputs):
        state = state.replace(apply_fn=apply)
        if plan.cell.mode != "train":
            return predict(state, inputs)
        new, _ = train_step(state, inputs)  # the metrics need not leave the device
        return new.params, new.opt_state

    out = (specs[0].params, specs[0].opt_state) if plan.cell.mode == "train" else specs[1]
    return step, specs, out, mesh


def _one_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


def _ratio(a, b):
    return a / b if a is not None and b else None


def facts(plan: Plan | None, step_fn, args, xla: dict) -> dict:
    """The record's KEYS for one compiled step: `step_fn(*args)` counted globally and, for a
    dp or fsdp cell on several devices (`plan` given), per device; `xla` holds XLA's
    flops_per_step and bytes_per_step for the ratios. Never raises: a failure is a reason."""
    start, out, reasons = time.perf_counter(), dict.fromkeys(KEYS), []
    try:
        total = count(step_fn, *args)
        out |= {
            "jaxpr_flops": total.flops,
            "jaxpr_matmul_flops": total.matmul_flops,
            "jaxpr_unfused_bytes": total.unfused_bytes,
            "xla_jaxpr_flops_ratio": _ratio(xla.get("flops_per_step"), total.flops),
            "fusion_bytes_ratio": _ratio(total.unfused_bytes, xla.get("bytes_per_step")),
        }
        out["jaxpr_uncounted"] = ", ".join(total.uncounted) or None
        if plan is None or plan.cell.devices == 1:
            out |= {"jaxpr_flops_per_device": total.flops, "jaxpr_comm_bytes": 0}
        else:
            program = per_device_program(plan, args)
            if isinstance(program, str):
                reasons.append(program)
            else:
                fn, in_specs, out_specs, mesh = program
                try:
                    local = count(fn, *args, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
                    out |= {"jaxpr_flops_per_device": local.flops}
                    out |= {"jaxpr_comm_bytes": local.comm_bytes}
                except Exception as exc:  # the global count stands without it
                    reasons.append(f"no per-device count: {_one_line(exc)}")
    except Exception as exc:
        reasons.append(f"failed: {_one_line(exc)}")
    out["jaxpr_reason"] = "; ".join(reasons) or None
    out["jaxpr_s"] = time.perf_counter() - start
    return out


def generate_facts(decode_fn, args, xla: dict) -> dict:
    """The record's KEYS for a generate cell's decode step (one device)."""
    return facts(None, decode_fn, args, xla)
