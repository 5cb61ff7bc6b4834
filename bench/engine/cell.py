"""A benchmark cell: what is measured, its validation and the keys that describe it."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from archbench import archs
from archbench.archs._remat import REMATS
from archbench.archs.registry import InputSpec, unknown
from archbench.engine.sharding import batch_axes, mesh_axes

MODES = ("train", "infer", "generate")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class Cell:
    """One benchmark cell; `batch` is global (split over `devices`), `dtype` the compute dtype."""

    arch: str
    size: str
    mode: str  # "train" | "infer" | "generate"
    batch: int
    dtype: str  # "float32" | "bfloat16"; parameters stay float32
    devices: int = 1
    seq_len: int | None = None  # sequence length override for sequence inputs
    sharding: str = "dp"  # a strategy of archbench.engine.sharding
    mesh: str | None = None  # named mesh axes, "data=2,model=2"; None: the strategy's own
    prompt_len: int | None = None  # generate: tokens of the prompt (prefill)
    gen_len: int | None = None  # generate: tokens decoded one at a time after the prefill
    variant: str | None = None  # an implementation variant of the family; None: its default
    remat: str | None = None  # train: its blocks' remat policy (archs._remat); None: none

    @property
    def id(self) -> str:
        """Stable name, e.g. "mlp-small-train-b32-float32-d1"; the resume key of result files.

        A strategy other than dp adds "-s<strategy>", an explicit mesh "-m<axis><size>...",
        a generate cell "-p<prompt_len>-g<gen_len>".
        """
        name = f"{self.arch}-{self.size}-{self.mode}-b{self.batch}-{self.dtype}-d{self.devices}"
        if self.seq_len is not None:
            name += f"-t{self.seq_len}"
        if self.prompt_len is not None:
            name += f"-p{self.prompt_len}"
        if self.gen_len is not None:
            name += f"-g{self.gen_len}"
        if self.sharding != "dp":
            name += f"-s{self.sharding}"
        if self.mesh is not None:
            name += "-m" + self.mesh.replace("=", "").replace(",", "")
        if self.variant is not None:
            name += f"-v{self.variant}"
        if self.remat is not None:
            name += f"-r{self.remat}"
        return name


def from_id(text: str) -> Cell:
    """The Cell of an id such as "mlp-small-train-b32-float32[-d2][-t256]" (inverse of Cell.id).

    Raises archs.UserError for text of another form; the names in it are checked by validate.
    """
    parts = text.strip().split("-")
    form = (
        "ARCH-SIZE-MODE-bBATCH-DTYPE[-dDEVICES][-tSEQ_LEN][-pPROMPT-gGEN][-sSHARDING][-mMESH]"
        "[-vVARIANT][-rREMAT], "
        "e.g. mlp-small-train-b32-float32"
    )
    if len(parts) < 5 or not parts[3].startswith("b"):
        raise archs.UserError(f"bad cell {text!r}; expected {form}")
    fields = {"batch": parts[3][1:]}
    for part in parts[5:]:
        key = {"d": "devices", "t": "seq_len", "s": "sharding", "m": "mesh"}.get(part[:1])
        key = key or {"p": "prompt_len", "g": "gen_len", "v": "variant", "r": "remat"}.get(part[:1])
        if key is None or key in fields:
            raise archs.UserError(f"bad cell {text!r}; expected {form}")
        fields[key] = part[1:]
    words = {k: fields.pop(k) for k in ("sharding", "mesh", "variant", "remat") if k in fields}
    if "mesh" in words:
        words["mesh"] = ",".join(f"{a}={n}" for a, n in re.findall(r"([a-z]+)(\d+)", words["mesh"]))
    try:
        numbers = {key: int(value) for key, value in fields.items()}
    except ValueError:
        raise archs.UserError(f"bad cell {text!r}; expected {form}") from None
    return Cell(parts[0], parts[1], parts[2], dtype=parts[4], **numbers, **words)


def _positive_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def validate(cell: Cell, devices=None) -> None:
    """Raise archs.UserError, in one line naming the valid choices, if `cell` cannot be measured.

    `devices`: those the cell may use (a target topology's, archbench.engine.topology); None:
    the devices JAX sees here."""
    spec = archs.get(cell.arch)
    size = spec.size(cell.size)
    spec.variant(cell.variant)  # an unknown one: UserError naming the family's variants
    if cell.mode not in MODES:
        raise unknown("mode", cell.mode, MODES)
    if cell.dtype not in DTYPES:
        raise unknown("dtype", cell.dtype, DTYPES)
    if cell.mode == "generate" or cell.prompt_len is not None or cell.gen_len is not None:
        _validate_generate(cell, spec, size)
    if cell.remat is not None:
        _validate_remat(cell, spec)
    if not _positive_int(cell.batch):
        raise archs.UserError(f"batch must be a positive integer, got {cell.batch!r}")
    if devices is not None:
        if not _positive_int(cell.devices) or cell.devices > len(devices):
            raise archs.UserError(
                f"devices must be 1..{len(devices)} (the target topology's {devices[0].device_kind}"
                f" devices), got {cell.devices!r}"
            )
    elif not _positive_int(cell.devices) or cell.devices > len(jax.devices()):
        raise archs.UserError(
            f"devices must be 1..{len(jax.devices())} (the {jax.default_backend()} devices JAX "
            f"sees), got {cell.devices!r}; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count"
            "=N gives N devices"
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


def can_decode(spec: archs.ArchSpec) -> bool:
    """Whether a family generates (mode "generate"): a language model whose module takes
    `decode=True`, continuing a sequence from its "cache" collection."""
    return spec.task == "lm" and "decode" in inspect.signature(spec.module.__call__).parameters


def decode_archs() -> list[str]:
    """The registered architectures that can generate."""
    return [name for name in archs.names() if can_decode(archs.get(name))]


def can_remat(spec: archs.ArchSpec) -> bool:
    """Whether a family rematerialises its blocks on request (a `remat` policy field)."""
    fields = {f.name: f for f in dataclasses.fields(spec.module)}
    return "remat" in fields and fields["remat"].type in (str, "str")


def remat_archs() -> list[str]:
    """The registered architectures that can rematerialise."""
    return [name for name in archs.names() if can_remat(archs.get(name))]


def _validate_remat(cell: Cell, spec: archs.ArchSpec) -> None:
    if cell.remat not in REMATS:
        raise unknown("remat", cell.remat, REMATS)
    if cell.mode != "train":
        raise archs.UserError(f"remat applies to mode train, not {cell.mode}")
    if not can_remat(spec):
        raise archs.UserError(
            f"{cell.arch} has no remat; the families that have it: {', '.join(remat_archs())}"
        )


def _validate_generate(cell: Cell, spec: archs.ArchSpec, size) -> None:
    if cell.mode != "generate":
        raise archs.UserError(f"prompt_len and gen_len apply to mode generate, not {cell.mode}")
    if not can_decode(spec):
        raise archs.UserError(
            f"mode generate needs a language model with a decode path "
            f"({', '.join(decode_archs())}); {cell.arch} is not one"
        )
    for name in ("prompt_len", "gen_len"):
        if not _positive_int(getattr(cell, name)):
            raise archs.UserError(
                f"mode generate needs {name} a positive integer, got {getattr(cell, name)!r}"
            )
    if cell.devices != 1 or cell.sharding != "dp" or cell.mesh is not None:
        raise archs.UserError("mode generate runs on one device: devices 1, sharding dp, no mesh")
    if cell.seq_len is not None:
        raise archs.UserError("mode generate takes prompt_len and gen_len, not seq_len")
    max_len = size.config.get("max_len")  # the positions a Transformer has; Mamba: none
    if max_len is not None and cell.prompt_len + cell.gen_len > max_len:
        raise archs.UserError(
            f"prompt_len + gen_len = {cell.prompt_len + cell.gen_len} exceeds the {max_len} "
            f"positions of {cell.arch} {cell.size}"
        )


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
    """The keys that describe `cell` in a result (params None if the model cannot be built;
    active_params, those one token uses, differ from params for a Mixture of Experts only)."""
    spec = archs.get(cell.arch)
    inputs = input_spec(cell)
    try:
        params, active_params = archs.param_counts(cell.arch, cell.size)
    except Exception:  # a broken model still gets a result row, with status "error"
        params = active_params = None
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
        "prompt_len": cell.prompt_len,
        "gen_len": cell.gen_len,
        "sharding": cell.sharding,
        "mesh": ",".join(
            f"{a}={n}" for a, n in mesh_axes(cell.sharding, cell.devices, cell.mesh).items()
        ),
        "variant": cell.variant,
        "remat": cell.remat,
        "params": params,
        "active_params": active_params,
        "task": spec.task,
        "input": inputs.describe(),
        "tokens_per_example": inputs.tokens_per_example,
    }


def build(cell: Cell, **overrides):
    """The cell's Linen module: its size, compute dtype, implementation variant and remat
    policy (passed only when the cell has one; `overrides` win)."""
    spec = archs.get(cell.arch)
    remat = {} if cell.remat is None else {"remat": cell.remat}
    fields = {**spec.variant(cell.variant), **remat, **overrides}
    return spec.build(cell.size, dtype=DTYPES[cell.dtype], **fields)
