"""archbench: how fast is this architecture on this accelerator, and how does it train?

The Python API: the zoo's registry and the measurement of one benchmark cell.

    import archbench
    archbench.list_archs("resnet*")                # ['resnet']
    archbench.get("gpt").sizes                     # the sizes of a family
    archbench.register("mine", MyModule, sizes={"tiny": {...}, "small": {...}},
                       input=archbench.InputSpec("image", (28, 28, 1)))  # your own model
    record = archbench.measure("mlp", "tiny", mode="train", batch=8)
    record["step_time_s"], record["flops_per_step"], record["compiled_bytes"]

The package's rooms, in the order imports may point (each imports only rooms after it):
archbench.cli (the `archbench` command) -> archbench.checks (harness checks) ->
archbench.report -> archbench.matrix (the pytest-benchmark suite, result files) ->
archbench.engine (one cell) -> archbench.train -> archbench.archs; archbench.units and
archbench.text (formatting) import nothing of archbench. See docs/design.md.
"""

from __future__ import annotations

import inspect
import os
import sys

if __name__ != "archbench" and "_pytest" not in sys.modules:
    # The folder bench/ is installed as the package `archbench`. pytest, collecting the matrix
    # suite (bench/matrix/test_matrix.py) from a checkout, imports it once more as `bench`.
    raise ImportError(
        f"{__name__!r}: the folder bench/ is the package archbench; "
        "import archbench (pip install -e . in the repository)"
    )

from importlib import metadata

import jax

from archbench import archs
from archbench.archs import ArchSpec, InputSpec, Size
from archbench.archs.plugins import register  # a user's own model: README "Your own model"
from archbench.engine import cell as _cell
from archbench.engine import fields as _fields
from archbench.engine.run import run_cell
from archbench.errors import UserError

__all__ = [
    *("ArchSpec", "UserError", "__version__", "active_param_count", "get", "list_archs"),
    *("measure", "param_count"),
    *(
        "load",
        "plot",
        "roofline",
    ),  # results as DataFrames, the report's plots: README "In a notebook"
    "register",
    "Size",
    "InputSpec",
]

try:
    __version__ = metadata.version("archbench")
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "unknown"

# The matrix's default seconds of timed rounds per cell (archbench.matrix.session).
TARGET_S = 1.5


def list_archs(pattern: str = "*") -> list[str]:
    """The registered architecture names matching a wildcard, sorted: `list_archs('res*')`."""
    return archs.names(pattern)


def get(name: str) -> ArchSpec:
    """The spec of architecture `name` (family, sizes, input, task); raises UserError naming
    the valid names for an unknown one."""
    return archs.get(name)


def param_count(name: str, size: str) -> int:
    """Parameters of `name` at `size`, counted from shapes alone (nothing is allocated)."""
    return archs.param_count(name, size)


def active_param_count(name: str, size: str) -> int:
    """Parameters one token uses: fewer than `param_count` for a Mixture of Experts
    (`active_param_count("moe", "8x7b")` is Mixtral's 12,879,925,248), the same for others."""
    return archs.active_param_count(name, size)


def measure(arch: str, size: str, *, target_s: float = TARGET_S, **fields) -> dict:
    """Measure one benchmark cell, as one cell of `archbench run` does.

    Args:
      arch, size: a registered architecture and one of its sizes.
      target_s: seconds of timed rounds.
      fields: any other field of the cell, by name (archbench.engine.fields, the same as the
        options of `archbench run`); each left out takes its default:
        mode: "train" (one optimizer step), "infer" (a forward pass) or "generate" (a
          language model prefills `prompt_len` tokens, default 64, then decodes `gen_len`,
          default 32, greedily one at a time from its cache: archbench.engine.generate);
        batch: the global batch (32), split over `devices`; "auto" for the largest
          devices * 2**k that compiles and runs (train and infer);
        dtype: the compute dtype, "float32" or "bfloat16" (parameters stay float32);
        devices: how many of the devices JAX sees (the first ones) the cell runs on (1);
        seq_len: a sequence length other than the model's own (sequence models only);
        sharding, mesh: how the cell is split over them ("dp", "fsdp", "tp", "fsdp+tp", "ep";
          archbench.engine.sharding) and the named mesh axes ("data=2,model=2");
        variant: an implementation variant the family declares (`get(arch).variants`);
        remat: train only: "none", "full" or "dots" (archbench.archs._remat);
        optimizer: train only: "adamw", "adafactor", "sgd" or "lion";
        xla_options: the named set of XLA options the cell runs with ("default";
          archbench.engine.xla_options). XLA reads its options once per process, when JAX
          starts, so this process must already hold the set's (XLA_FLAGS set before
          importing jax); another set raises UserError saying what to set. `archbench run
          --xla-options a,b` starts a process per set instead.
    Returns:
      The record the matrix stores in a results file's `extra_info`: step time median and
      IQR, samples/s, FLOPs, memory, compile time, MFU (archbench.engine.outcome.RESULT_KEYS);
      for generate also time to first token (prefill_s), per-token latency (decode_token_s,
      decode_token_iqr_s), decode_tokens_per_s, cache_bytes and the achieved bandwidth.
      A model that fails to build, compile or run gives status "oom" or "error" with a
      one-line "error" instead of raising.
    Raises:
      UserError (one line, naming the valid choices) for an unknown name or a bad value.
    """
    unknown = sorted(set(fields) - set(_fields.NAMES))
    if unknown:
        raise UserError(
            f"measure: no field {', '.join(unknown)}; the fields: {', '.join(_fields.NAMES[2:])}"
        )
    cell = _cell.filled(_cell.Cell(arch, size, **fields))
    # the project's PRNG: "rbg" initialises models without a kernel per parameter shape
    with jax.default_prng_impl(os.environ.get("JAX_DEFAULT_PRNG_IMPL", "rbg")):
        return run_cell(cell, target_s=target_s)


# help(archbench.measure) shows every field as a keyword argument, with its default
measure.__signature__ = inspect.Signature(
    [
        inspect.Parameter("arch", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
        inspect.Parameter("size", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
        *(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
            for f in _fields.FIELDS[2:]
        ),
        inspect.Parameter("target_s", inspect.Parameter.KEYWORD_ONLY, default=TARGET_S),
    ],
    return_annotation=dict,
)


def load(*files):
    """The cells of one or more results files as a pandas DataFrame, one row per cell.

    The columns are those of `archbench report --csv`: results.FLAT_COLUMNS first (the cell,
    status, step time, throughput, FLOPs, memory, device, error, cell_id, source file), then
    every other metric the files hold; a missing value is NaN (None in text columns).

        df = archbench.load("cpu.json", "h100.json")
        ok = df[df.status == "ok"]
        ok.pivot_table(index="arch", columns="mode", values="step_time_s")
        ok.groupby(["device_kind", "arch"]).samples_per_s.max()

    Args:
      files: paths of results files (`archbench run --out`), or one list of them.
    Raises:
      UserError naming a file that is missing, not JSON or not an archbench results file.
    """
    import pandas as pd

    from archbench.matrix import results

    paths = [p for f in files for p in ([f] if isinstance(f, str | os.PathLike) else f)]
    if not paths:
        raise UserError("load: give one or more results files")
    rows = results.flat_rows(paths)
    return pd.DataFrame(rows, columns=results.columns(rows))


def plot(data, name: str | None = None, roofline: str | None = None):
    """The report's plots of results files or of `load`'s DataFrame, as matplotlib Figures.

        figs = archbench.plot("cpu.json")     # {"throughput": Figure, "step_time_vs_params": ...}
        archbench.plot(df[df.arch != "mlp"], "throughput")   # one Figure; a notebook shows it

    Args:
      data: a results file, a list of them, or a DataFrame of flat rows (perhaps filtered).
        Files get the report's run labels; a DataFrame one run per source file.
      name: one plot: throughput, step_time_vs_params, step_time_vs_batch, memory_vs_batch,
        step_time_vs_seq_len, step_time_vs_devices, memory_vs_devices, generation_vs_prompt_len,
        generation_vs_batch, roofline. None: every plot the data has (a dict by name).
      roofline: accelerators ("h100,v5e") the roofline plot also shows each cell's bound on.
    Raises:
      UserError for an unknown name or accelerator, or a plot the data cannot draw (saying why).
    """
    import matplotlib

    from archbench.engine.roofline import accelerator_names

    names = accelerator_names(roofline) if roofline else ()
    backend = matplotlib.get_backend()  # the report's plots module selects Agg on import;
    try:  # a notebook keeps its own backend (inline) for everything else
        from archbench.report import notebook

        drawn = notebook.figures(data, names)
    finally:
        if matplotlib.get_backend() != backend:
            matplotlib.use(backend)
    if name is None:
        return {k: f.figure for k, f in drawn.items() if getattr(f, "figure", None) is not None}
    if name not in drawn:
        raise UserError(f"plot {name!r}: not a plot; the plots are {', '.join(drawn)}")
    if getattr(drawn[name], "figure", None) is None:
        raise UserError(f"plot {name!r}: skipped, {drawn[name].reason}")
    return drawn[name].figure


def roofline(data, accelerators: str | None = None):
    """Each cell's roofline as a pandas DataFrame: its bounds on the device it ran on, and on
    each accelerator named, one row per cell and accelerator.

        archbench.roofline("cpu.json", "h100,v5e")

    Columns: the cell (cell_id, run, arch, size, mode, batch, dtype, devices, family), the
    accelerator, `basis` ("measured", "compiled": compiled only, or "bound, not measured": a
    projection onto an accelerator's datasheet roofs), arithmetic_intensity (FLOPs/byte), the
    three bounds (compute_bound_s, memory_bound_s, comm_bound_s), roofline_bound_s (the
    largest), roofline_serial_s (their sum), binding_roof, and, for measured rows only,
    step_time_s and roofline_efficiency (bound / step time). archbench.engine.roofline says how.

    Args:
      data: a results file, a list of them, or `load`'s DataFrame.
      accelerators: a comma list of names (`archbench report --roofline`'s); None: none.
    Raises:
      UserError for an unknown accelerator (naming the known ones) or a bad results file.
    """
    import pandas as pd

    from archbench.engine.roofline import accelerator_names
    from archbench.report.notebook import rows_of
    from archbench.report.roofline import entries

    names = accelerator_names(accelerators) if accelerators else ()
    return pd.DataFrame(entries(rows_of(data), names))
