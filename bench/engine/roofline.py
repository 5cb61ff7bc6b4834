"""The roofline of a cell: three lower bounds on its step time, from what the compiled step
does and what the device can do.

What one device does in one step, from the compiled program: its FLOPs and bytes accessed
(XLA's cost analysis; archbench.engine.program) and the result bytes of its collectives
(archbench.engine.analysis.collectives). What one device can do (archbench.engine.peaks): its
peak FLOP/s for the cell's dtype, its memory bandwidth, its interconnect bandwidth
(bidirectional per chip). Then

    compute_bound_s = FLOPs / peak FLOP/s
    memory_bound_s  = bytes accessed / memory bandwidth
    comm_bound_s    = collective bytes / interconnect bandwidth

`roofline_bound_s` is the largest of the three: however well they overlap, the step takes at
least that long. `roofline_serial_s` is their sum, the step with no overlap at all (not a
bound: a step can overlap them). `binding_roof` names the largest; `arithmetic_intensity` is
FLOPs / bytes; `roofline_efficiency` = bound / measured step time, at most 1 when the counts
and the roofs are right.

Which FLOPs: those the device executes (`device_flops_per_step`: the partitioned program's
own count, recurrent models counted unrolled), not the model's (`model_flops_per_step`, what
MFU counts): a bound on the step's time must count the work the step does, recomputation
included, or it would bound a step that does not exist.

Whose roofs: a datasheet's for a known accelerator; this host's measured ones otherwise (the
best square matmul, a pass over a large array). Devices simulated on one host
(`--xla_force_host_platform_device_count`) share its roofs: its peak, its memory bandwidth,
and, as their interconnect, that same memory (their collectives are copies in it); their
bounds count the work of every device against the one host. `datasheet_roofs` gives another
accelerator's roofs by name (`ACCELERATORS`), for `archbench report --roofline h100,v5e`:
a bound there, never a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from archbench.engine import peaks
from archbench.errors import UserError

# The roofline's keys of every record (archbench.engine.outcome.RESULT_KEYS); None where unknown.
KEYS = (
    *("device_flops_per_step", "arithmetic_intensity"),
    *("compute_bound_s", "memory_bound_s", "comm_bound_s"),
    *("roofline_bound_s", "roofline_serial_s", "binding_roof", "roofline_efficiency"),
    *("peak_bandwidth_bytes_per_s", "bandwidth_source", "bandwidth_basis"),
    *("interconnect_bytes_per_s", "interconnect_source", "interconnect_basis"),
)
ROOFS = ("compute", "memory", "communication")

# Accelerators a bound can be projected onto: name -> a device_kind their tables know.
ACCELERATORS = {
    "h100": "NVIDIA H100 80GB HBM3",  # SXM5
    "h100-pcie": "NVIDIA H100 PCIe",
    "h100-nvl": "NVIDIA H100 NVL",
    "h200": "NVIDIA H200",
    "a100": "NVIDIA A100-SXM4-80GB",
    "a100-40gb": "NVIDIA A100-SXM4-40GB",
    "v4": "TPU v4",
    "v5e": "TPU v5 lite",
    "v5p": "TPU v5p",
    "v6e": "TPU v6 lite",
}


@dataclass(frozen=True)
class Roofs:
    """What one device can do: FLOP/s, memory and interconnect bytes/s (None: unknown).

    `shared`: one set of roofs for every device of the cell (devices simulated on one host).
    """

    name: str
    flops_per_s: float | None
    memory_bytes_per_s: float | None
    interconnect_bytes_per_s: float | None
    shared: bool = False

    @property
    def ridge(self) -> float | None:
        """The arithmetic intensity (FLOPs/byte) where the memory roof meets the compute roof."""
        return _div(self.flops_per_s, self.memory_bytes_per_s)


def _div(a, b):
    return a / b if a is not None and b else None


def measured_roofs(device: jax.Device, dtype: str) -> tuple[Roofs, dict]:
    """The roofs of `device` (datasheet, else measured on it) and the record's keys saying
    what each figure is (the peak's among them: a cell compiled only has no other)."""
    peak, peak_source, peak_basis = peaks.peak_tflops(device, dtype)
    memory, memory_source, memory_basis = peaks.peak_bandwidth(device)
    link, link_source, link_basis = peaks.peak_interconnect(device)
    roofs = Roofs(
        device.device_kind,
        None if peak is None else peak * 1e12,
        memory,
        link,
        shared=device.platform == "cpu",
    )
    sources = {
        **{"peak_tflops": peak, "peak_source": peak_source, "peak_basis": peak_basis},
        "peak_bandwidth_bytes_per_s": memory,
        "bandwidth_source": memory_source,
        "bandwidth_basis": memory_basis,
        "interconnect_bytes_per_s": link,
        "interconnect_source": link_source,
        "interconnect_basis": link_basis,
    }
    return roofs, sources


def accelerator_names(text: str) -> list[str]:
    """'h100,v5e' -> ['h100', 'v5e']; UserError (one line, the known names) for any other."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ACCELERATORS]
    if unknown or not names:
        raise UserError(
            f"--roofline {text!r}: unknown accelerator {', '.join(unknown) or '(none given)'}; "
            f"the known ones: {', '.join(ACCELERATORS)}"
        )
    return list(dict.fromkeys(names))


def datasheet_roofs(name: str, dtype: str) -> Roofs:
    """The datasheet roofs of accelerator `name` (ACCELERATORS) for a cell in `dtype`."""
    kind = ACCELERATORS[name]
    sheet = peaks.datasheet_for(kind)
    peak = None if sheet is None else peaks.datasheet_peak(sheet, dtype)[0]
    memory, link = peaks.bandwidth_for(kind), peaks.interconnect_for(kind)
    return Roofs(
        sheet.name if sheet else kind,
        None if peak is None else peak * 1e12,
        None if memory is None else memory.tbps * 1e12,
        None if link is None or link.gbps is None else link.gbps * 1e9,
    )


def bounds(
    device_flops: float | None,
    device_bytes: float | None,
    collective_bytes: float | None,
    devices: int,
    roofs: Roofs,
) -> dict:
    """The three bounds of a step whose one device does `device_flops` FLOPs, accesses
    `device_bytes` bytes and receives `collective_bytes` bytes of collective results, on
    `roofs`; their maximum, their sum and which binds. A bound whose count or roof is unknown
    is None and takes no part; a cell without collectives has a communication bound of 0."""
    scale = devices if roofs.shared else 1  # one host does the work of every simulated device
    compute = _div(None if device_flops is None else device_flops * scale, roofs.flops_per_s)
    memory = _div(None if device_bytes is None else device_bytes * scale, roofs.memory_bytes_per_s)
    comm = 0.0
    if collective_bytes:
        comm = _div(collective_bytes * scale, roofs.interconnect_bytes_per_s)
    found = {r: t for r, t in zip(ROOFS, (compute, memory, comm), strict=True) if t is not None}
    binding = max(found, key=found.get) if found and max(found.values()) > 0 else None
    return {
        "arithmetic_intensity": _div(device_flops, device_bytes),
        "compute_bound_s": compute,
        "memory_bound_s": memory,
        "comm_bound_s": comm,
        "roofline_bound_s": found[binding] if binding else None,
        "roofline_serial_s": sum(found.values()) if binding else None,
        "binding_roof": binding,
    }


def record_keys(
    device_flops, bytes_per_step, collective_bytes, devices, roofs, sources, step_time_s=None
) -> dict:
    """KEYS of a record: `bytes_per_step` is global (all devices), as the record keeps it;
    `step_time_s` the measured median, None for a cell compiled only."""
    device_bytes = None if bytes_per_step is None else bytes_per_step / devices
    found = bounds(device_flops, device_bytes, collective_bytes, devices, roofs)
    efficiency = _div(found["roofline_bound_s"], step_time_s)
    return {"device_flops_per_step": device_flops, **found, "roofline_efficiency": efficiency,
            **sources}  # fmt: skip


def row_counts(row: dict) -> tuple[float | None, float | None, float | None, int]:
    """What a flat row of a results file says one device does per step: (FLOPs, bytes,
    collective bytes, devices). A file older than the roofline has no device FLOPs: the
    global count / devices, as an even split would be."""
    devices = int(row.get("devices") or 1)
    flops = row.get("device_flops_per_step")
    if flops is None and row.get("flops_per_step") is not None:
        flops = row["flops_per_step"] / devices
    total = row.get("bytes_per_step")
    return flops, None if total is None else total / devices, row.get("collective_bytes"), devices
