"""Named sets of XLA compiler options: the `xla_options` field of a cell.

XLA reads its options from the environment once per process, when JAX starts its first
backend: `XLA_FLAGS` for the CPU and GPU compilers, `LIBTPU_INIT_ARGS` for libtpu. A set is
therefore a property of the process a cell runs in, and `archbench run --xla-options a,b`
runs each set in a process of its own (archbench.cli.xla_workers). A process may run the
cells of a set only when its environment already holds what the set asks for (`check`). A
set may also pin its process to fewer CPUs (`OptionSet.cpus`, applied by `pin` when the
worker starts): XLA's CPU runtime sizes its thread pools from the process's affinity.

The user's own `XLA_FLAGS` and `LIBTPU_INIT_ARGS` always win: a set's option that the user
also sets is left out, and the user's string follows the set's (`compose`). Every record
says what was in force (`in_force`), the user's own part too.

This module reads the environment only and imports nothing of JAX, so a process that has not
started JAX can decide here what a worker's environment must be.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from archbench.errors import UserError

# The environment variables a set writes, and the backends whose options go in each. The CPU
# and GPU compilers both read XLA_FLAGS and each ignores the other's options (a jaxlib built
# without a GPU still knows every xla_gpu_* option), so both go in; libtpu reads its own.
VARIABLES = {"XLA_FLAGS": ("cpu", "gpu"), "LIBTPU_INIT_ARGS": ("tpu",)}
# Where a worker process finds the user's own value of each variable (the variable itself
# then holds the set's options and the user's); a process that is no worker has none.
USER_PREFIX = "ARCHBENCH_USER_"
DEFAULT = "default"


@dataclass(frozen=True)
class OptionSet:
    """A named set of compiler options, per backend ("cpu", "gpu", "tpu")."""

    name: str
    about: str  # what it is for, and where its figures or its source are
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The CPUs the process may run on (its affinity), None for all it has. XLA's CPU runtime
    # sizes its thread pools from the process's affinity, and no XLA option sets them.
    cpus: int | None = None

    def flags(self, backends: tuple[str, ...]) -> list[str]:
        return [flag for b in backends for flag in self.options.get(b, ())]


_NO_YNN_REDUCE = "--xla_cpu_experimental_ynn_fusion_type=-reduce"

SETS: dict[str, OptionSet] = {
    s.name: s
    for s in (
        OptionSet("none", "XLA's own defaults: archbench sets no option"),
        # The project's default set, what a cell runs with when nobody asks for another. It
        # stays equal to `none` until a set wins a quiet-machine A-B-A over the default
        # matrix with the same outputs (docs/performance.md, "Compiler options").
        OptionSet(DEFAULT, "the project's default set: today XLA's own defaults, as none"),
        # YNNPACK (XLA CPU's default dot and convolution library in jaxlib 0.11 and later)
        # also takes reductions into its fusions, which can run slower than XLA's own loops:
        # jax-ml/jax#37465 (open) gives this option as the workaround. docs/performance.md
        # measured 0.70x on encoder inference and 0.80x on gpt inference with the same
        # outputs, under load; not yet measured over the default matrix.
        OptionSet(
            "cpu-no-ynn-reduce",
            "CPU: reductions out of YNNPACK's fusions (jax-ml/jax#37465's workaround)",
            {"cpu": (_NO_YNN_REDUCE,)},
        ),
        # Only single dots and convolutions go to YNNPACK, no elementwise or reduction
        # fusions: 0.69x on encoder inference in docs/performance.md, same outputs.
        OptionSet(
            "cpu-ynn-dots-only",
            "CPU: YNNPACK for single dots and convolutions only",
            {
                "cpu": (
                    "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
                )
            },
        ),
        # An empty type list turns YNNPACK off: XLA CPU's own dot emitter (gpt train 1.03x
        # in docs/performance.md): the baseline of what YNNPACK brings.
        OptionSet(
            "cpu-no-ynn",
            "CPU: YNNPACK off, XLA's own dots and convolutions",
            {"cpu": ("--xla_cpu_experimental_ynn_fusion_type=",)},
        ),
        # Unsafe floating-point rewrites (reassociation, reciprocals): changes outputs
        # (9.9e-5 relative on gpt train in docs/performance.md), so never a default.
        OptionSet(
            "cpu-fast-math",
            "CPU: fast math (changes outputs)",
            {"cpu": ("--xla_cpu_enable_fast_math=true",)},
        ),
        # One thread: XLA's side of a one-thread comparison (PyTorch's
        # torch.set_num_threads(1)) and of per-op profiles whose events add up to the step.
        # Eigen's single-threaded mode alone is not that: in jaxlib 0.12 the process still
        # runs two tf_XLAEigen threads on a 2-CPU machine, and YNNPACK's dots and
        # convolutions use them (vit small infer: 23 ms, 1.9 CPU s per second, with the flag
        # or without). Its process is pinned to one CPU, which gives XLA one thread of each
        # pool ("The same cell, a different speed" in docs/performance.md; the affinity is
        # also what jax-ml/jax#1539 gives as the way to limit JAX's CPU threads).
        OptionSet(
            "cpu-one-thread",
            "CPU: one thread (the process pinned to one CPU, Eigen single-threaded)",
            {"cpu": ("--xla_cpu_multi_thread_eigen=false",)},
            cpus=1,
        ),
        # The latency-hiding scheduler overlaps collectives with compute: recommended by
        # JAX's "GPU performance tips" and set in NVIDIA's JAX-Toolbox images. Matters for
        # several devices; not measured by archbench.
        OptionSet(
            "gpu-latency-hiding",
            "GPU: the latency-hiding scheduler (JAX's GPU performance tips)",
            {"gpu": ("--xla_gpu_enable_latency_hiding_scheduler=true",)},
        ),
        # cuBLAS instead of XLA's Triton GEMM emitter for matmuls (NVIDIA JAX-Toolbox's
        # performance flags); not measured by archbench.
        OptionSet(
            "gpu-no-triton-gemm",
            "GPU: cuBLAS for every matmul, no Triton GEMMs (NVIDIA JAX-Toolbox)",
            {"gpu": ("--xla_gpu_enable_triton_gemm=false",)},
        ),
    )
}
NAMES = tuple(SETS)
# A set's name: lower-case words joined by "-" (its cell id writes "_" for "-": Cell.id)
NAME_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def get(name: str) -> OptionSet:
    """The set called `name`; UserError in one line naming every set for an unknown one."""
    if name not in SETS:
        raise UserError(f"unknown xla_options {name!r}; valid: {', '.join(NAMES)}")
    return SETS[name]


def label(name: str | None) -> str:
    """' xla cpu-no-ynn-reduce', said after a cell run with a set other than the default; ''
    for the default (and for results older than the sets, None)."""
    return "" if name in (None, DEFAULT) else f" xla {name}"


def option_name(flag: str) -> str:
    """'--xla_cpu_enable_fast_math=true' -> 'xla_cpu_enable_fast_math'."""
    return flag.lstrip("-").split("=", 1)[0]


def user_value(variable: str, environ: Mapping[str, str] | None = None) -> str:
    """The user's own value of `variable` ("" when unset): in a worker, what its parent had."""
    environ = os.environ if environ is None else environ
    return environ.get(USER_PREFIX + variable, environ.get(variable, ""))


def compose(flags: list[str], user: str) -> str:
    """A set's `flags` and the user's own string as one value: the user's string last, and
    none of the set's options that the user also sets (so the user's always win)."""
    theirs = {option_name(token) for token in user.split() if token.startswith("-")}
    mine = [f for f in flags if option_name(f) not in theirs]
    return " ".join([*mine, user] if user else mine)


def environment(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The value of each variable of VARIABLES that a process running set `name` must have."""
    option_set = get(name)
    return {
        var: compose(option_set.flags(backends), user_value(var, environ))
        for var, backends in VARIABLES.items()
    }


def worker_environment(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a worker process for set `name`: this one's, the variables
    as the set needs them, and the user's own values kept beside them."""
    environ = dict(os.environ if environ is None else environ)
    for var, value in environment(name, environ).items():
        environ[USER_PREFIX + var] = user_value(var, environ)
        if value:
            environ[var] = value
        else:
            environ.pop(var, None)
    return environ


def cpus() -> int | None:
    """How many CPUs this process may run on (its affinity); None where the OS has no
    affinity to read (macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def pin(name: str) -> Callable[[], None] | None:
    """What a worker process for set `name` must run before it starts (subprocess's
    preexec_fn): its affinity to the set's CPUs, the first of this process's. None for a set
    that leaves the CPUs alone; UserError where the OS cannot pin a process."""
    wanted = get(name).cpus
    if wanted is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise UserError(f"xla_options {name!r} pins its process to {wanted} CPU(s): Linux only")
    mine = set(sorted(os.sched_getaffinity(0))[:wanted])
    return lambda: os.sched_setaffinity(0, mine)


def is_in_force(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process's environment is what set `name` needs, and for a set that pins
    its CPUs (given no `environ`), this process's affinity. It reads the environment: a
    process that changed XLA_FLAGS after JAX started its backend runs with the flags it
    started with, whatever this says."""
    wanted, have = get(name).cpus, cpus()
    if environ is None and wanted is not None and (have is None or have > wanted):
        return False
    environ = os.environ if environ is None else environ
    return all(environ.get(v, "") == value for v, value in environment(name, environ).items())


def check(name: str) -> None:
    """Raise UserError in one line unless this process can run cells of set `name`."""
    if is_in_force(name):
        return
    needed = "; ".join(f"{var}={value!r}" for var, value in environment(name).items() if value)
    have = "; ".join(f"{var}={os.environ.get(var, '')!r}" for var in VARIABLES)
    wanted = get(name).cpus
    if wanted is not None:
        needed, have = f"{needed} and {wanted} CPU(s)", f"{have} and {cpus()} CPU(s)"
    raise UserError(
        f"xla_options {name!r} needs {needed or 'no XLA options'} before JAX starts, and this "
        f"process has {have}; XLA reads them once per process: set them before importing jax, "
        f"or run `archbench run --xla-options {name}`, which starts a process for it"
    )


def in_force() -> dict[str, str | int | None]:
    """The record's keys: each variable as this process has it and the user's own part."""
    keys = {}
    for var in VARIABLES:
        keys[var.lower()] = os.environ.get(var) or None
        keys["user_" + var.lower()] = user_value(var) or None
    keys["process_cpus"] = cpus()  # XLA's CPU thread pools are this many threads each
    return keys


# The keys in_force gives every record: xla_flags, user_xla_flags, libtpu_init_args, ...
RECORD_KEYS = tuple(k for var in VARIABLES for k in (var.lower(), "user_" + var.lower()))
RECORD_KEYS += ("process_cpus",)
