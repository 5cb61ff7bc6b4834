"""Compile for a TPU topology this host does not have (`--target-topology v5e:2x2`).

JAX describes a TPU slice without one attached: `jax.experimental.topologies.get_topology_desc`
returns the slice's devices, which `jax.sharding.Mesh` accepts like local ones, so a cell's
step lowers and compiles for them from jax.ShapeDtypeStructs (archbench.engine.aot): XLA's
TPU compiler gives the per-device memory, the FLOPs and the collectives of the real program.
The compiler is libtpu, which `pip install 'archbench[tpu]'` (jax[tpu]) brings; it runs on a
CPU-only host. Nothing is ever executed on these devices.

libtpu asks the Cloud TPU metadata server which TPU it is on unless TPU_SKIP_MDS_QUERY is set:
off a TPU VM there is none, so it is set here before libtpu starts. Its warnings about the
accelerator type and worker hostnames are harmless.
"""

from __future__ import annotations

import functools
import os
import re

import jax

from archbench.engine import aot
from archbench.errors import UserError

# device_kind of a topology's devices -> the chip's memory in aot.DEVICE_MEMORY
_MEMORY_OF_KIND = (
    ("tpu v5 lite", "v5e"),
    ("tpu v6 lite", "v6e"),
    ("tpu v5", "v5p"),
    ("tpu v4", "v4"),
)
INSTALL = "pip install 'archbench[tpu]' (jax[tpu], which brings libtpu)"


@functools.cache
def devices(name: str) -> tuple[jax.Device, ...]:
    """The devices of TPU topology `name` ("v5e:2x2", "v4:2x2x1", "v5p:2x2x2", "v6e:4x4").

    Raises:
      UserError (one line) if the TPU compiler is not installed or the name is not a topology.
    """
    if not re.fullmatch(r"[a-z0-9]+:[0-9]+(x[0-9]+)*", name):
        raise UserError(
            f"--target-topology {name!r}: expected GENERATION:SHAPE, e.g. v5e:2x2, v4:2x2x1, "
            "v5p:2x2x2 or v6e:4x4"
        )
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies

    try:
        return tuple(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except RuntimeError as e:
        if "not installed" in str(e):
            raise UserError(
                f"--target-topology {name}: the TPU compiler is not installed; {INSTALL}"
            ) from None
        raise UserError(f"--target-topology {name}: {_first_line(e)}") from None
    except Exception as e:  # libtpu's INVALID_ARGUMENT for a shape it does not know
        raise UserError(f"--target-topology {name}: {_first_line(e)}") from None


def device_memory(target: tuple[jax.Device, ...]) -> int | None:
    """Bytes of HBM per device of a topology (datasheet), None for an unknown kind.

    A chip's memory is shared by its TensorCores: where a topology lists each core as a
    device (v4 without megacore: core_on_chip 0 and 1), each has half of it.
    """
    kind = target[0].device_kind.lower()
    cores = len({getattr(d, "core_on_chip", 0) for d in target})
    for prefix, name in _MEMORY_OF_KIND:
        if kind.startswith(prefix):
            return aot.DEVICE_MEMORY[name] // cores
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
