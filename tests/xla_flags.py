"""The XLA options of the test run, and of the child processes its tests start.

The suite checks what programs compute, never how fast they run, so it compiles with LLVM's
optimisations off (`--xla_backend_optimization_level=0`): that level only chooses how XLA:CPU
turns each fused kernel into machine code. The optimised HLO, its cost analysis and its
buffer assignment are the same at 0 as at XLA's default (checked on gpt, resnet and lstm
tiny cells: same program text, FLOPs, bytes and memory analysis), and the compiles take a
fraction of the CPU (resnet tiny's init and train step compiled and run once: 12.1 CPU s at
the default, 3.0 at 0; gpt tiny's 5.7 and 3.1; two cores, nothing else running, load 0.66). What changes is float32 rounding where LLVM would have fused a multiply and an add,
within every tolerance of the suite. `make run` and every user's run compile at XLA's
default; a user's own XLA_FLAGS win here as everywhere.
"""

from __future__ import annotations

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def set_for_this_run() -> None:
    """Put FAST_COMPILE in this process's XLA_FLAGS (before JAX starts), unless the user's
    own flags already choose a level; every child process inherits it."""
    own = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in own:
        os.environ["XLA_FLAGS"] = f"{FAST_COMPILE} {own}".strip()


def with_devices(n: int) -> str:
    """XLA_FLAGS for a child process that simulates `n` CPU devices, with the run's flags."""
    own = os.environ.get("XLA_FLAGS", "")
    return f"{own} --xla_force_host_platform_device_count={n}".strip()
