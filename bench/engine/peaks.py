"""Peak matmul throughput and memory bandwidth of a device: datasheet tables for known
accelerators, else measured (square matmuls; a pass over a large array).

Every figure is dense (no 2:4 structured sparsity): NVIDIA datasheets quote the sparse number
first and mark it with an asterisk; the dense one is half of it.

Which peak a "float32" cell is compared with follows what XLA really runs. JAX's default matmul
precision computes float32 dot products with reduced-precision arithmetic: TF32 tensor cores on
NVIDIA Ampere and later, one bfloat16 pass on TPU (docs.jax.dev, "Matmul precision"). So under
the default precision "float32" uses the TF32 peak on NVIDIA and the bf16 peak on TPU; when
`jax_default_matmul_precision` asks for true float32 ("highest", "float32", "F32_F32_F32") it
uses the FP32 (CUDA core) peak on NVIDIA and none on TPU (its multi-pass emulation has no
datasheet figure).
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from archbench.engine import xla_options


@dataclass(frozen=True)
class Datasheet:
    """Dense peak TFLOP/s per chip of one accelerator, with its source."""

    name: str
    kinds: tuple[str, ...]  # lower-case device_kind substrings that select this entry
    bf16: float
    tf32: float | None  # NVIDIA only
    fp32: float | None
    source: str


# Order matters: the first entry with a matching substring wins, so variants come before the
# family name ("h100 pcie" before "h100", "tpu v5 lite" before "tpu v5").
DATASHEETS: tuple[Datasheet, ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet (2023), PCIe column: BF16 1,513 / TF32 756 sparse;
    # FP32 51.2.
    Datasheet("NVIDIA H100 PCIe", ("h100 pcie",), 756.5, 378.0, 51.2, "NVIDIA H100 datasheet"),
    # Same datasheet, H100 NVL column: BF16 1,671 / TF32 835 sparse; FP32 60.
    Datasheet("NVIDIA H100 NVL", ("h100 nvl",), 835.5, 417.5, 60.0, "NVIDIA H100 datasheet"),
    # H100 SXM5 (device_kind "NVIDIA H100 80GB HBM3"): BF16 1,979 / TF32 989 sparse, FP32 67;
    # 989.4 / 494.7 / 66.9 are the dense figures at the 1,830 MHz boost clock (132 SMs).
    Datasheet("NVIDIA H100 SXM5", ("h100",), 989.4, 494.7, 66.9, "NVIDIA H100 datasheet"),
    # NVIDIA H200 datasheet (2024): H200 NVL BF16 1,671 / TF32 835 sparse, FP32 60.
    Datasheet("NVIDIA H200 NVL", ("h200 nvl",), 835.5, 417.5, 60.0, "NVIDIA H200 datasheet"),
    # H200 SXM: the H100 SXM5 compute die with more HBM (BF16 1,979 / TF32 989 sparse, FP32 67).
    Datasheet("NVIDIA H200 SXM", ("h200",), 989.4, 494.7, 66.9, "NVIDIA H200 datasheet"),
    # NVIDIA A100 Tensor Core GPU datasheet (2021), SXM4 and PCIe alike: BF16 312, TF32 156,
    # FP32 19.5 (dense).
    Datasheet("NVIDIA A100", ("a100",), 312.0, 156.0, 19.5, "NVIDIA A100 datasheet"),
    # Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e):
    # peak bf16 compute per chip. device_kind: "TPU v4", "TPU v5 lite", "TPU v5"/"TPU v5p",
    # "TPU v6 lite". "TPU v4 lite" (v4i, inference only) is deliberately absent.
    Datasheet("TPU v5e", ("tpu v5 lite", "tpu v5e"), 197.0, None, None, "Google Cloud TPU v5e"),
    Datasheet("TPU v5p", ("tpu v5p", "tpu v5"), 459.0, None, None, "Google Cloud TPU v5p"),
    Datasheet("TPU v6e", ("tpu v6 lite", "tpu v6e"), 918.0, None, None, "Google Cloud TPU v6e"),
    Datasheet("TPU v4", ("tpu v4",), 275.0, None, None, "Google Cloud TPU v4"),
)

_TRUE_F32 = ("highest", "float32", "f32_f32_f32")


def datasheet_for(device_kind: str) -> Datasheet | None:
    """The datasheet entry whose substring occurs in `device_kind`, or None."""
    kind = device_kind.lower()
    if "v4 lite" in kind:
        return None
    for sheet in DATASHEETS:
        if any(k in kind for k in sheet.kinds):
            return sheet
    return None


def datasheet_peak(sheet: Datasheet, dtype: str) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, what it is) of `sheet` for matmuls in `dtype` (module docstring)."""
    if dtype == "bfloat16":
        return sheet.bf16, f"{sheet.name}, bf16, dense ({sheet.source})"
    precision = str(jax.config.jax_default_matmul_precision or "default").lower()
    if precision in _TRUE_F32:
        if sheet.fp32 is None:
            return None, f"{sheet.name}: no datasheet figure for true float32"
        return sheet.fp32, f"{sheet.name}, fp32 at precision {precision!r} ({sheet.source})"
    if sheet.tf32 is not None:
        return sheet.tf32, f"{sheet.name}, tf32 dense: float32 default precision ({sheet.source})"
    return sheet.bf16, f"{sheet.name}, bf16: float32 default precision ({sheet.source})"


def _best_time(run, runs: int = 5, spend_s: float = 0.2, most: int = 200) -> float:
    """Best wall time of `run()`: at least `runs` calls, more while under `spend_s` have passed.

    A short call on a shared machine often gets a core to itself, a long one is time-sliced
    with the other processes: more calls of the fast sizes find the uncontended speed that a
    step of the same length gets too, so the peak is not measured below what cells achieve.
    """
    best, begin, calls = float("inf"), time.perf_counter(), 0
    while calls < runs or (time.perf_counter() - begin < spend_s and calls < most):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return best


# ---- measured figures, shared by the processes of one session ----------------------------------
#
# A process measures a CPU's peaks once (about two seconds). Where ARCHBENCH_PEAKS_FILE names a
# JSON file, the figures measured are kept there, keyed by what they depend on (the figure, the
# device kind, JAX's version, the XLA options in force and the CPUs the process may use), and a
# later process with the same key reads them instead of measuring again: the processes of one session (a test run, a
# script's `archbench run`s) then share one roof, and none measures while another runs.
PEAKS_FILE = "ARCHBENCH_PEAKS_FILE"


def _shared(what: str, device: jax.Device, measure) -> tuple[float, str]:
    """`measure()` -> (figure, basis), or the figure an earlier process kept in PEAKS_FILE."""
    path = os.environ.get(PEAKS_FILE)
    if not path:
        return measure()
    # XLA's CPU thread pools are as large as the CPUs the process may use (its affinity)
    flags, cpus = os.environ.get("XLA_FLAGS", ""), xla_options.cpus()
    key = json.dumps([what, device.device_kind, jax.__version__, flags, cpus])
    hit = _read_kept(path).get(key)
    if isinstance(hit, list) and len(hit) == 2 and isinstance(hit[0], (int, float)):
        return hit[0], f"{hit[1]}; kept in {PEAKS_FILE} by an earlier process"
    figure, basis = measure()
    kept = {**_read_kept(path), key: [figure, basis]}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(kept, f)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    except OSError:  # a folder that is gone or read-only: the figure stands, unkept
        pass
    return figure, basis


def _read_kept(path: str) -> dict:
    try:
        with open(path) as f:
            kept = json.load(f)
    except (OSError, ValueError):  # none yet, or unreadable: measure
        return {}
    return kept if isinstance(kept, dict) else {}


@functools.cache
def measured_matmul_tflops(dtype: str, device: jax.Device) -> tuple[float, str]:
    """Best TFLOP/s of square matmuls on `device`, measured once per process, device and dtype
    (or read from PEAKS_FILE).

    A peak is the best throughput observed, so this takes the maximum over sizes 512, 1024
    and 2048 (stopping early once one product takes over 0.25 s), five runs or more each
    (_best_time). One size alone
    is not enough: on a shared two-core VM a single 2048^3 product measured anywhere from 94
    to 145 GFLOP/s, and models then "beat" the peak (MFU above 1).
    Returns:
      (TFLOP/s, a description of what was run).
    """
    return _shared(f"matmul {dtype}", device, lambda: _measure_matmul(dtype, device))


def _measure_matmul(dtype: str, device: jax.Device) -> tuple[float, str]:
    matmul = jax.jit(lambda a, b: a @ b)
    best_tflops, best_n = 0.0, 0
    for n in (512, 1024, 2048):
        a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype)), device)
        matmul(a, a).block_until_ready()  # compile and warm up
        best = _best_time(lambda a=a: matmul(a, a).block_until_ready())
        if 2 * n**3 / best / 1e12 > best_tflops:
            best_tflops, best_n = 2 * n**3 / best / 1e12, n
        if best > 0.25:
            break
    basis = f"best {dtype} square matmul (512 to {n}, best at {best_n})"
    return best_tflops, f"{basis}, best of 5 or more (0.2 s a size)"


def peak_tflops(device: jax.Device, dtype: str) -> tuple[float | None, str, str]:
    """Peak TFLOP/s of one `device` for matmuls in `dtype` ("float32" or "bfloat16").

    Returns:
      (peak or None, peak_source "datasheet" | "measured-matmul" | "unknown", peak_basis: what
      the figure is).
    """
    sheet = datasheet_for(device.device_kind)
    if sheet is not None:
        peak, basis = datasheet_peak(sheet, dtype)
        return peak, ("datasheet" if peak is not None else "unknown"), basis
    peak, basis = measured_matmul_tflops(dtype, device)
    return peak, "measured-matmul", f"{device.device_kind}: {basis}"


# ---- memory bandwidth (what bounds decoding: every step reads the weights and the cache) ----


@dataclass(frozen=True)
class Bandwidth:
    """Peak memory (HBM) bandwidth per chip of one accelerator, in TB/s (10^12 B/s)."""

    name: str
    kinds: tuple[str, ...]  # lower-case device_kind substrings, first match wins as above
    tbps: float
    source: str


A100_SHEET = "NVIDIA A100 datasheet"
BANDWIDTHS: tuple[Bandwidth, ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet (2023): SXM 3.35 TB/s (HBM3), PCIe 2 TB/s (HBM2e),
    # NVL 3.9 TB/s. device_kind: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "... NVL".
    Bandwidth("NVIDIA H100 PCIe", ("h100 pcie",), 2.0, "NVIDIA H100 datasheet"),
    Bandwidth("NVIDIA H100 NVL", ("h100 nvl",), 3.9, "NVIDIA H100 datasheet"),
    Bandwidth("NVIDIA H100 SXM5", ("h100",), 3.35, "NVIDIA H100 datasheet"),
    # NVIDIA H200 Tensor Core GPU datasheet (2024): 141 GB HBM3e at 4.8 TB/s, SXM and NVL alike.
    Bandwidth("NVIDIA H200", ("h200",), 4.8, "NVIDIA H200 datasheet"),
    # NVIDIA A100 Tensor Core GPU datasheet (2021): 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s,
    # 40GB (SXM and PCIe) 1,555 GB/s. device_kind: "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB
    # PCIe", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB".
    Bandwidth("NVIDIA A100 80GB PCIe", ("a100 80gb pcie", "a100-pcie-80gb"), 1.935, A100_SHEET),
    Bandwidth("NVIDIA A100 80GB SXM", ("a100-sxm4-80gb", "a100 80gb"), 2.039, A100_SHEET),
    Bandwidth("NVIDIA A100 40GB", ("a100",), 1.555, A100_SHEET),
    # Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e):
    # HBM bandwidth per chip 1,200 / 819 / 2,765 / 1,640 GB/s.
    Bandwidth("TPU v5e", ("tpu v5 lite", "tpu v5e"), 0.819, "Google Cloud TPU v5e"),
    Bandwidth("TPU v5p", ("tpu v5p", "tpu v5"), 2.765, "Google Cloud TPU v5p"),
    Bandwidth("TPU v6e", ("tpu v6 lite", "tpu v6e"), 1.64, "Google Cloud TPU v6e"),
    Bandwidth("TPU v4", ("tpu v4",), 1.2, "Google Cloud TPU v4"),
)


def bandwidth_for(device_kind: str) -> Bandwidth | None:
    """The bandwidth entry whose substring occurs in `device_kind`, or None ("v4 lite": None)."""
    kind = device_kind.lower()
    if "v4 lite" in kind:
        return None
    return next((b for b in BANDWIDTHS if any(k in kind for k in b.kinds)), None)


@functools.cache
def measured_copy_bandwidth(device: jax.Device) -> tuple[float, str]:
    """Best bytes/s of an elementwise pass over a float32 array on `device`, read and written
    in place (2 * size bytes), measured once per process: the best over arrays of 1 to 64 MiB,
    five passes or more each (_best_time).

    In place (the input donated): a pass that writes a fresh array spends most of its time
    faulting in new pages, not moving bytes (on a two-core VM, an order of magnitude slower
    than the same pass in place). Several sizes, as for the matmul peak: XLA's bytes accessed
    count every operand of every fusion, most of which a CPU serves from its caches, so the
    roof is the fastest level the pass reaches, not main memory alone; a roof below the best
    would not bound them (roofline efficiencies above 1). Kept in PEAKS_FILE as above.
    """
    return _shared("copy", device, lambda: _measure_copy(device))


def _measure_copy(device: jax.Device) -> tuple[float, str]:
    copy = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    best_rate, best_mib = 0.0, 0
    for mib in (1, 4, 16, 64):
        box = [copy(jax.device_put(jnp.zeros((mib * 2**18,), jnp.float32), device))]  # warm up

        def one_pass(box=box):
            box[0] = copy(box[0])
            box[0].block_until_ready()

        best = _best_time(one_pass)
        a = box[0]
        if 2 * a.nbytes / best > best_rate:
            best_rate, best_mib = 2 * a.nbytes / best, mib
    del a
    basis = f"best in-place pass over float32 arrays of 1 to 64 MiB (read + write), at {best_mib}"
    return best_rate, f"{basis} MiB, best of 5 or more (0.2 s a size)"


def peak_bandwidth(device: jax.Device) -> tuple[float, str, str]:
    """Peak memory bandwidth of one `device` in bytes/s.

    Returns:
      (bytes/s, source "datasheet" | "measured-copy", basis: what the figure is).
    """
    sheet = bandwidth_for(device.device_kind)
    if sheet is not None:
        return sheet.tbps * 1e12, "datasheet", f"{sheet.name}, {sheet.tbps} TB/s ({sheet.source})"
    rate, basis = measured_copy_bandwidth(device)
    return rate, "measured-copy", f"{device.device_kind}: {basis}"


# ---- interconnect bandwidth (what bounds a collective: the chip's links to its peers) ------------
#
# Every figure is bidirectional per chip: the sum over the chip's links of what they carry in
# both directions, the way both vendors quote it now (Google's TPU pages: "Bidirectional
# inter-chip interconnect (ICI) bandwidth (per chip)"; NVIDIA: "900 GB/s of bidirectional
# GPU-to-GPU bandwidth"). Older Google pages gave half of it, one direction, in Gbps (v5e
# "1600 Gbps" = 200 GB/s). It is the right figure for archbench's communication roof: a
# collective's result bytes on one device (analysis.collectives) / this figure is a lower
# bound on its time, since every collective must bring at least half of its result from other
# chips (an all-gather over p >= 2 chips receives (p-1)/p of it) and a chip receives at half
# its bidirectional bandwidth at most; reduce-scatter and all-reduce receive more.


@dataclass(frozen=True)
class Interconnect:
    """Bidirectional chip-to-chip bandwidth per chip of one accelerator, in GB/s (10^9 B/s)."""

    name: str
    kinds: tuple[str, ...]  # lower-case device_kind substrings, first match wins as above
    gbps: float | None  # None: no datasheet figure
    link: str
    source: str


INTERCONNECTS: tuple[Interconnect, ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet (2023), "Interconnect": SXM NVLink 900 GB/s (18
    # NVLink 4 links of 50 GB/s, both directions); PCIe and NVL, NVLink bridge 600 GB/s.
    Interconnect(
        "NVIDIA H100 PCIe", ("h100 pcie",), 600.0, "NVLink bridge", "NVIDIA H100 datasheet"
    ),
    Interconnect("NVIDIA H100 NVL", ("h100 nvl",), 600.0, "NVLink bridge", "NVIDIA H100 datasheet"),
    Interconnect("NVIDIA H100 SXM5", ("h100",), 900.0, "NVLink 4", "NVIDIA H100 datasheet"),
    # NVIDIA H200 datasheet (2024): SXM NVLink 900 GB/s; NVL, 2- or 4-way NVLink bridge 900 GB/s.
    Interconnect("NVIDIA H200", ("h200",), 900.0, "NVLink 4", "NVIDIA H200 datasheet"),
    # NVIDIA A100 datasheet (2021): SXM NVLink 600 GB/s; PCIe, NVLink bridge for 2 GPUs 600 GB/s.
    Interconnect("NVIDIA A100", ("a100",), 600.0, "NVLink 3", A100_SHEET),
    # Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v5e, v5p, v6e),
    # "Bidirectional inter-chip interconnect (ICI) bandwidth (per chip)": 400 / 1,200 / 800 GBps.
    Interconnect("TPU v5e", ("tpu v5 lite", "tpu v5e"), 400.0, "ICI", "Google Cloud TPU v5e"),
    Interconnect("TPU v5p", ("tpu v5p", "tpu v5"), 1200.0, "ICI", "Google Cloud TPU v5p"),
    Interconnect("TPU v6e", ("tpu v6 lite", "tpu v6e"), 800.0, "ICI", "Google Cloud TPU v6e"),
    # The v4 page gives ICI per pod (all-reduce 1.1 PB/s, bisection 24 TB/s), none per chip.
    Interconnect("TPU v4", ("tpu v4",), None, "ICI", "Google Cloud TPU v4"),
)


def interconnect_for(device_kind: str) -> Interconnect | None:
    """The interconnect entry whose substring occurs in `device_kind`, or None ("v4 lite": None)."""
    kind = device_kind.lower()
    if "v4 lite" in kind:
        return None
    return next((i for i in INTERCONNECTS if any(k in kind for k in i.kinds)), None)


def peak_interconnect(device: jax.Device) -> tuple[float | None, str, str]:
    """Chip-to-chip bandwidth of one `device` in bytes/s, bidirectional per chip.

    Host-simulated devices (CPU, `--xla_force_host_platform_device_count`) have no interconnect:
    their collectives are copies in the host's memory, so their roof is the host's measured
    memory bandwidth, shared by all of them (source "host-memory").
    Returns:
      (bytes/s or None, source "datasheet" | "host-memory" | "unknown", basis).
    """
    if device.platform == "cpu":
        rate, basis = measured_copy_bandwidth(device)
        return rate, "host-memory", f"simulated devices, no interconnect: host memory, {basis}"
    sheet = interconnect_for(device.device_kind)
    if sheet is None or sheet.gbps is None:
        return None, "unknown", f"{device.device_kind}: no datasheet figure per chip"
    basis = f"{sheet.name}, {sheet.link} {sheet.gbps:g} GB/s bidirectional ({sheet.source})"
    return sheet.gbps * 1e9, "datasheet", basis
