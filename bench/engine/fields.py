"""The fields of a benchmark cell, each declared once.

A cell is one value of every field below. From this table come `Cell` and its id, both ways
(archbench.engine.cell), the options of `archbench run` and of the pytest matrix, the
parametrisation of the matrix (archbench.matrix.cells), the keyword arguments of
`archbench.measure`, and the keys that describe a cell in every record and results file
(archbench.engine.outcome, archbench.matrix.results). A new field is a new row here; no other
module names the fields one by one.

A field is either a matrix axis (a comma list on the command line: one cell per value) or a
setting (one value for every cell, such as the mesh). A field applies to some modes only
(remat and optimizer to train cells, the prompt and generated lengths to generate cells); a
cell of another mode keeps the field's default. One axis is a property of the process rather
than of the cell: the XLA options (archbench.engine.xla_options), which `archbench run` runs
one process per value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archbench.archs._remat import REMATS
from archbench.engine import xla_options
from archbench.engine.sharding import STRATEGIES
from archbench.errors import UserError

MODES = ("train", "infer", "generate")
DTYPE_NAMES = ("float32", "bfloat16")
AUTO = "auto"  # batch: the largest that fits
# What a train cell steps with: optax's optimizers by name, each at learning rate 1e-3 with
# its own defaults (archbench.engine.program); adamw, as every earlier release had it.
OPTIMIZERS = ("adamw", "adafactor", "sgd", "lion")


@dataclass(frozen=True)
class Field:
    """One field of a cell: its type, default, place in the cell id, option and help."""

    name: str
    type: type  # int or str
    default: Any  # a cell's value when nobody asks for another
    help: str  # the option's help text
    tag: str = ""  # its letter in the cell id ("b" in "-b32"); "": the bare value
    always: bool = False  # in the id even at its default (arch, size, mode, batch, dtype, devices)
    axis: bool = True  # a comma list of values (a matrix axis); False: one for every cell
    main_job: str | None = None  # `archbench run`'s value(s) when the option is not given
    fill: Any = None  # where it applies and is not given: this value (the prompt's 64 tokens)
    modes: tuple[str, ...] = MODES  # the modes it applies to; other cells keep the default
    choices: tuple[str, ...] | None = None  # the valid values, where a fixed list says them
    # Record keys the report shows side by side for this field's values, each against the
    # same cell at the default (archbench.report.axes); (): no section of its own.
    compare: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        """Its command-line option: "--seq-len"."""
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """One value as typed (on the command line, in a cell id) -> the cell's value.

        Raises:
          UserError in one line: not a positive integer, or not one of `choices`.
        """
        text = text.strip()
        if self.name == "batch" and text == AUTO:
            return AUTO
        if self.type is int:
            try:
                value = int(text)
            except ValueError:
                value = 0
            if value <= 0:
                hint = " or 'auto'" if self.name == "batch" else ""
                raise UserError(f"{self.option} {text!r}: not a positive integer{hint}")
            return value
        if self.choices is not None and text not in self.choices:
            raise UserError(f"unknown {self.name} {text!r}; valid: {', '.join(self.choices)}")
        return text

    def values(self, text: str | None) -> list:
        """The values of a comma list as typed (None: not given -> `main_job`, else the
        default); each checked by `parse`, duplicates dropped, order kept."""
        if text is None:
            if self.main_job is None:
                return [self.default]
            text = self.main_job
        items = [item.strip() for item in str(text).split(",")] if self.axis else [text]
        items = [item for item in items if item]
        if not items:
            raise UserError(f"{self.option} {text!r}: no value given")
        return list(dict.fromkeys(self.parse(item) for item in items))


def _mesh_id(value: str) -> str:
    return value.replace("=", "").replace(",", "")


def _xla_options_id(value: str) -> str:  # "-" separates an id's parts: "cpu_no_ynn_reduce"
    return value.replace("-", "_")


FIELDS: tuple[Field, ...] = (
    Field(
        "arch", str, None, "architectures, wildcards allowed (default: all)",
        always=True, main_job="*",
    ),
    Field("size", str, "small", "sizes (default: small)", always=True, main_job="small"),
    Field(
        "mode", str, "train",
        "train, infer, generate (default: all three; generate for the language models that "
        "decode)",
        always=True, main_job="train,infer,generate", choices=MODES,
    ),
    Field(
        "batch", int, 32, "batch sizes, or 'auto' for the largest that fits (default: 32)",
        tag="b", always=True,
    ),
    Field(
        "dtype", str, "float32", "compute dtypes, e.g. float32,bfloat16 (default: float32)",
        always=True, choices=DTYPE_NAMES,
    ),
    Field("devices", int, 1, "device counts (default: 1)", tag="d", always=True),
    Field(
        "seq_len", int, None, "sequence lengths of sequence models (default: the model's)",
        tag="t", modes=("train", "infer"),
    ),
    Field(
        "prompt_len", int, None,
        "generate: prompt lengths, prefilled at once (default: 64, where it fits)",
        tag="p", modes=("generate",), fill=64,
    ),
    Field(
        "gen_len", int, None,
        "generate: tokens decoded greedily one at a time after the prompt (default: 32)",
        tag="g", modes=("generate",), fill=32,
    ),
    Field(
        "sharding", str, "dp",
        "strategies: dp (batch split, state replicated), fsdp (state split too), tp "
        "(Transformer heads and MLP split over 'model'), fsdp+tp, ep (Mixture-of-Experts "
        "experts split over 'data') (default: dp)",
        tag="s", modes=("train", "infer"), choices=STRATEGIES,
    ),
    Field(
        "mesh", str, None,
        "named mesh axes for every cell, e.g. data=2,model=2 (sizes multiply to --devices)",
        tag="m", axis=False, modes=("train", "infer"),
    ),
    Field(
        "variant", str, None,
        "implementation variants of the same computation, for the families that declare "
        "them (archbench list --json: variants), e.g. scan,assoc for Mamba (default: each "
        "family's own)",
        tag="v",
    ),
    Field(
        "remat", str, None,
        "rematerialisation of each block in train cells: none, full (recompute all of it in "
        "the backward pass), dots (keep matmul results), for the Transformer families, mixer "
        "and resnet (default: none, and no remat in the cell id)",
        tag="r", modes=("train",), choices=REMATS,
    ),
    Field(
        "optimizer", str, "adamw",
        "train: optax optimizers, each at learning rate 1e-3: adamw, adafactor (factored "
        "second moments), sgd, lion (default: adamw)",
        tag="o", modes=("train",), choices=OPTIMIZERS,
        compare=("step_time_s", "opt_state_bytes_per_param", "opt_state_bytes", "temp_bytes"),
    ),
    Field(
        "xla_options", str, xla_options.DEFAULT,
        "named sets of XLA compiler options, each run by `archbench run` in a process of its "
        f"own: {', '.join(xla_options.NAMES)} (archbench.engine.xla_options; default: "
        "default, the project's set; your own XLA_FLAGS always win)",
        tag="x", choices=xla_options.NAMES, compare=("step_time_s", "compile_s", "temp_bytes"),
    ),
)  # fmt: skip

BY_NAME = {f.name: f for f in FIELDS}
NAMES = tuple(BY_NAME)
ID_CODECS = {"mesh": _mesh_id, "xla_options": _xla_options_id}


def names(*, without: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The fields' names in table order, but those in `without`."""
    return tuple(n for n in NAMES if n not in without)
