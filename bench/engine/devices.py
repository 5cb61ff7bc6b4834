"""Devices: the machine a result comes from, the data-parallel mesh, and scaling efficiency.

Several devices: `devices=N` runs data-parallel over `Mesh(jax.devices()[:N], ("data",))`.
The batch is sharded on its leading axis, parameters and optimizer state are replicated, and
jit propagates these input shardings through the step (XLA inserts the gradient all-reduce).
On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=N` gives N devices; they share the
host's cores, so they test correctness, not speed.

Several hosts: start the same program on every host; `archbench run --coordinator host0:1234
--num-processes P --process-id i` (or `--distributed auto` under SLURM, Open MPI or on a Cloud
TPU pod) joins them through `jax.distributed.initialize` before any other JAX call
(archbench.cli.processes, docs/multihost.md). `jax.devices()` then lists the devices of
every host, so the same Mesh code spans them, and each process computes only the shards of the
jitted state and batch that live on its own devices. `device_info` records `process_count` and
`local_device_count` (devices per process) beside the global `device_count`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from archbench.engine import xla_options


def data_parallel(devices: Sequence[jax.Device]) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, batch-sharded) placements over a one-axis ("data",) mesh of `devices`."""
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def scaling_efficiency(
    t1_step_s: float, tN_step_s: float, n: int, same_global_batch: bool
) -> float:
    """Parallel efficiency of `n` devices against one (1.0 is ideal).

    Strong scaling (same_global_batch=True: both runs process the same global batch, each of the
    n devices 1/n of it): ideally tN = t1 / n, so efficiency = t1 / (n * tN).
    Weak scaling (False: each device keeps the one-device batch, the global batch grows n-fold):
    ideally tN = t1, so efficiency = t1 / tN.
    """
    if n < 1 or t1_step_s <= 0 or tN_step_s <= 0:
        raise ValueError("need n >= 1 and positive step times")
    return t1_step_s / (n * tN_step_s) if same_global_batch else t1_step_s / tN_step_s


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    """The machine a result was measured on: JAX backend, devices, library versions, CPU."""
    device = jax.devices()[0]
    versions = {name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),  # every process's: the devices a mesh can span
        "local_device_count": jax.local_device_count(),  # this process's
        "process_count": jax.process_count(),
        **versions,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # the user's own; a worker of `archbench run --xla-options` adds its set's options,
        # which each record and machine_info["xla_options"] hold
        "xla_flags": xla_options.user_value("XLA_FLAGS") or None,
    }
