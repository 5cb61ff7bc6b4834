"""A cell's result: the keys every result has, and the result of a cell that failed."""

from __future__ import annotations

import jax

from archbench.engine import roofline
from archbench.engine.cell import IDENTITY_KEYS, Cell, cell_keys
from archbench.engine.jaxpr_cost import KEYS as JAXPR_KEYS
from archbench.engine.plan import Plan
from archbench.engine.xla_options import RECORD_KEYS as XLA_KEYS
from archbench.errors import Unsupported

# Mode "generate" (archbench.engine.generate); None in the results of other modes. Its memory
# bandwidth (peak_bandwidth_bytes_per_s, bandwidth_source, bandwidth_basis) is the roofline's.
GENERATE_KEYS = (
    *("prefill_s", "prefill_compile_s", "decode_compile_s"),
    *("decode_token_s", "decode_token_iqr_s", "decode_tokens_per_s", "cache_bytes"),
    *("flops_per_token", "bytes_per_token", "bandwidth_bytes_per_s", "bandwidth_fraction"),
)
# Files written beside the results on request (archbench.matrix.artifacts): the optimized HLO
# of the step (of the decode step for generate, whose prefill has its own), a jax.profiler
# trace directory and the Perfetto trace in it, and each operation of the traced step against
# its roofline (archbench.matrix.op_roofline); None when not asked for.
ARTIFACT_KEYS = (
    *("hlo_file", "prefill_hlo_file", "profile_dir", "perfetto_trace", "op_roofline_file"),
)
# Every result has exactly these keys, in this order; a failed cell has None for what it lacks.
# A key that is also a cell field (the optimizer, once it is one) stands once, among the fields.
RESULT_KEYS = tuple(dict.fromkeys((
    *IDENTITY_KEYS,  # the cell id, its fields (archbench.engine.fields), family, params, ...
    *("status", "error"),
    "backend",
    *("device_kind", "optimizer", "step_time_s", "step_time_iqr_s", "step_time_min_s"),
    *("rounds", "steps_per_round", "samples_per_s", "tokens_per_s", "tflops_per_s", "mfu"),
    *("peak_tflops", "peak_source", "peak_basis", "lower_s", "compile_s", "compile_cache"),
    *("flops_per_step", "bytes_per_step", "flops_source", "bytes_source", "argument_bytes"),
    *("output_bytes", "temp_bytes", "alias_bytes", "compiled_bytes", "batch_sharding"),
    *("batch_per_device", "peak_bytes", "host_peak_rss_bytes", "peak_bytes_source"),
    "peak_bytes_set_by_cell",
    *("collective_count", "collective_bytes", "collectives", "device_memory_bytes", "fits"),
    # Rematerialisation: the step's FLOPs without it (what mfu counts) and the hardware FLOPs
    # utilisation of the executed ones (flops_per_step, with the recomputation).
    *("model_flops_per_step", "hfu"),
    # The optimizer of a train cell and the bytes of its state, all devices together
    *("opt_state_bytes", "opt_state_bytes_per_param"),
    # jax.experimental.roofline's count of the step's jaxpr beside XLA's (engine.jaxpr_cost)
    *JAXPR_KEYS,
    # The roofline (archbench.engine.roofline): three lower bounds on the step time, the roofs
    # they come from, and the measured step time's efficiency against the largest.
    *roofline.KEYS,
    *GENERATE_KEYS,
    *ARTIFACT_KEYS,
    # The compiler options in force (XLA_FLAGS, LIBTPU_INIT_ARGS) and the user's own part of
    # them (archbench.engine.xla_options; the cell's xla_options names the set)
    *XLA_KEYS,
)))  # fmt: skip


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure (XLA's RESOURCE_EXHAUSTED or a MemoryError)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("resource_exhausted", "resource exhausted", "out of memory"))


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure(plan: Plan | Cell, exc: BaseException) -> dict:
    """The result of a cell that did not run: status "unsupported" (its strategy or variant
    has no form for this model on this backend), "oom" or "error", and a one-line message.
    `plan`: the resolved cell (its keys at hand), or a Cell (they are looked up)."""
    result = dict.fromkeys(RESULT_KEYS)
    result.update(plan.keys if isinstance(plan, Plan) else cell_keys(plan))
    result["status"] = (
        "unsupported" if isinstance(exc, Unsupported) else "oom" if is_oom(exc) else "error"
    )
    result["error"] = _one_line(exc)
    device = jax.devices()[0]
    result["backend"], result["device_kind"] = device.platform, device.device_kind
    return result
