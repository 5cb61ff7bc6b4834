"""A benchmark cell: what is measured, its validation and the keys that describe it."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from archbench import archs
from archbench.archs.registry import InputSpec, unknown
from archbench.engine.sharding import batch_axes, mesh_axes

MODES = ("train", "infer")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class Cell:
    """One benchmark cell; `batch` is global (split over `devices`), `dtype` the compute dtype."""

    arch: str
    size: str
    mode: str  # "train" | "infer"
    batch: int
    dtype: str  # "float32" | "bfloat16"; parameters stay float32
    devices: int = 1
    seq_len: int | None = None  # sequence length override for sequence inputs
    sharding: str = "dp"  # a strategy of archbench.engine.sharding
    mesh: str | None = None  # named mesh axes, "data=2,model=2"; None: the strategy's own

    @property
    def id(self) -> str:
        """Stable name, e.g. "mlp-small-train-b32-float32-d1"; the resume key of result files.

        A strategy other than dp adds "-s<strategy>", an explicit mesh "-m<axis><size>...".
        """
        name = f"{self.arch}-{self.size}-{self.mode}-b{self.batch}-{self.dtype}-d{self.devices}"
        if self.seq_len is not None:
            name += f"-t{self.seq_len}"
        if self.sharding != "dp":
            name += f"-s{self.sharding}"
        if self.mesh is not None:
            name += "-m" + self.mesh.replace("=", "").replace(",", "")
        return name


def from_id(text: str) -> Cell:
    """The Cell of an id such as "mlp-small-train-b32-float32[-d2][-t256]" (inverse of Cell.id).

    Raises archs.UserError for text of another form; the names in it are checked by validate.
    """
    parts = text.strip().split("-")
    form = (
        "ARCH-SIZE-MODE-bBATCH-DTYPE[-dDEVICES][-tSEQ_LEN][-sSHARDING][-mMESH], "
        "e.g. mlp-small-train-b32-float32"
    )
    if len(parts) < 5 or not parts[3].startswith("b"):
        raise archs.UserError(f"bad cell {text!r}; expected {form}")
    fields = {"batch": parts[3][1:]}
    for part in parts[5:]:
        key = {"d": "devices", "t": "seq_len", "s": "sharding", "m": "mesh"}.get(part[:1])
        if key is None or key in fields:
            raise archs.UserError(f"bad cell {text!r}; expected {form}")
        fields[key] = part[1:]
    words = {k: fields.pop(k) for k in ("sharding", "mesh") if k in fields}
    if "mesh" in words:
        words["mesh"] = ",".join(f"{a}={n}" for a, n in re.findall(r"([a-z]+)(\d+)", words["mesh"]))
    try:
        numbers = {key: int(value) for key, value in fields.items()}
    except ValueError:
        raise archs.UserError(f"bad cell {text!r}; expected {form}") from None
    return Cell(parts[0], parts[1], parts[2], dtype=parts[4], **numbers, **words)


def _positive_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def validate(cell: Cell) -> None:
    """Raise archs.UserError, in one line naming the valid choices, if `cell` cannot be measured."""
    spec = archs.get(cell.arch)
    size = spec.size(cell.size)
    if cell.mode not in MODES:
        raise unknown("mode", cell.mode, MODES)
    if cell.dtype not in DTYPES:
        raise unknown("dtype", cell.dtype, DTYPES)
    if not _positive_int(cell.batch):
        raise archs.UserError(f"batch must be a positive integer, got {cell.batch!r}")
    available = len(jax.devices())
    if not _positive_int(cell.devices) or cell.devices > available:
        raise archs.UserError(
            f"devices must be 1..{available} (the {jax.default_backend()} devices JAX sees), "
            f"got {cell.devices!r}; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "gives N devices"
        )
    shards = batch_shards(cell)  # UserError for a bad strategy or mesh
    if cell.batch % shards:
        raise archs.UserError(
            f"batch {cell.batch} is not divisible by the {shards} batch shards of "
            f"{cell.sharding} on {cell.devices} device(s); valid batches are multiples of {shards}"
        )
    if cell.seq_len is not None:
        if size.input.kind == "image":
            raise archs.UserError(
                f"seq_len applies to sequence inputs; {cell.arch} takes {size.input.describe()}"
            )
        if not _positive_int(cell.seq_len):
            raise archs.UserError(f"seq_len must be a positive integer, got {cell.seq_len!r}")


def batch_shards(cell: Cell) -> int:
    """How many pieces the batch is split into (the product of its mesh axes)."""
    axes = mesh_axes(cell.sharding, cell.devices, cell.mesh)
    return math.prod(axes[a] for a in batch_axes(cell.sharding, axes))


def input_spec(cell: Cell) -> InputSpec:
    """The size's input spec with `cell.seq_len` applied (to source and target for seq2seq)."""
    spec = archs.get(cell.arch).size(cell.size).input
    if cell.seq_len is None:
        return spec
    if spec.kind == "seq2seq":
        return dataclasses.replace(spec, shape=(cell.seq_len, cell.seq_len))
    return dataclasses.replace(spec, shape=(cell.seq_len, *spec.shape[1:]))


def sequence_length(spec: InputSpec) -> int | None:
    """Time steps a recurrent model scans over: None for images, the longer side for seq2seq."""
    if spec.kind == "image":
        return None
    return max(spec.shape) if spec.kind == "seq2seq" else spec.shape[0]


def cell_keys(cell: Cell) -> dict:
    """The keys that describe `cell` in a result (params None if the model cannot be built)."""
    spec = archs.get(cell.arch)
    inputs = input_spec(cell)
    try:
        params = archs.param_count(cell.arch, cell.size)
    except Exception:  # a broken model still gets a result row, with status "error"
        params = None
    return {
        "cell_id": cell.id,
        "arch": cell.arch,
        "size": cell.size,
        "family": spec.family,
        "mode": cell.mode,
        "batch": cell.batch,
        "dtype": cell.dtype,
        "devices": cell.devices,
        "seq_len": cell.seq_len,
        "sharding": cell.sharding,
        "mesh": ",".join(
            f"{a}={n}" for a, n in mesh_axes(cell.sharding, cell.devices, cell.mesh).items()
        ),
        "params": params,
        "task": spec.task,
        "input": inputs.describe(),
        "tokens_per_example": inputs.tokens_per_example,
    }
