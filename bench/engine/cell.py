"""A benchmark cell: a value of every field of archbench.engine.fields, its id both ways, its
validation and the keys that describe it."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from archbench import archs
from archbench.archs._remat import REMATS
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import Size
from archbench.engine import xla_options
from archbench.engine.fields import AUTO, BY_NAME, FIELDS, ID_CODECS, MODES, NAMES
from archbench.engine.sharding import batch_axes, mesh_axes
from archbench.errors import UserError, unknown

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # fields.DTYPE_NAMES -> JAX's


def _cell_id(cell) -> str:
    """Stable name, e.g. "mlp-small-train-b32-float32-d1"; the resume key of result files.

    The fields in table order (archbench.engine.fields), each as its tag and value: those
    marked `always` always, the others only when they differ from their default (a strategy
    other than dp adds "-s<strategy>", an explicit mesh "-m<axis><size>...", a generate cell
    "-p<prompt_len>-g<gen_len>").
    """
    parts = []
    for f in FIELDS:
        value = getattr(cell, f.name)
        if f.always or value != f.default:
            parts.append(f.tag + ID_CODECS.get(f.name, str)(value))
    return "-".join(parts)


Cell = dataclasses.make_dataclass(
    "Cell",
    [(f.name, f.type | None) if f.name == "arch" else (f.name, Any, f.default) for f in FIELDS],
    frozen=True,
    namespace={
        "__doc__": "One benchmark cell: a value of every field of archbench.engine.fields "
        "(`batch` is global, split over `devices`; `dtype` the compute dtype, parameters "
        "stay float32).",
        "id": property(_cell_id),
        "__module__": __name__,
    },
)
HEAD = FIELDS[:5]  # arch, size, mode, batch, dtype: the id's first five parts, in this order


def _form() -> str:
    head = "-".join(f.tag + f.name.upper() for f in HEAD)
    rest = "".join(f"[-{f.tag}{f.name.upper()}]" for f in FIELDS[len(HEAD) :])
    return f"{head}{rest}, e.g. mlp-small-train-b32-float32"


def _from_id_text(name: str, text: str):
    if name == "mesh":
        return ",".join(f"{a}={n}" for a, n in re.findall(r"([a-z]+)(\d+)", text))
    if name == "xla_options":
        return text.replace("_", "-")
    if BY_NAME[name].type is int and not (name == "batch" and text == AUTO):
        return int(text)
    return text


def from_id(text: str) -> Cell:
    """The Cell of an id such as "mlp-small-train-b32-float32[-d2][-t256]" (inverse of Cell.id).

    Raises UserError for text of another form; the names in it are checked by validate.
    """
    parts = text.strip().split("-")
    bad = UserError(f"bad cell {text!r}; expected {_form()}")
    if len(parts) < len(HEAD):
        raise bad
    texts = {}
    for f, part in zip(HEAD, parts, strict=False):
        if not part.startswith(f.tag) or part == f.tag:
            raise bad
        texts[f.name] = part[len(f.tag) :]
    tags = {f.tag: f.name for f in FIELDS[len(HEAD) :]}
    for part in parts[len(HEAD) :]:
        name = tags.get(part[:1])
        if name is None or name in texts:
            raise bad
        texts[name] = part[1:]
    try:
        return Cell(**{name: _from_id_text(name, t) for name, t in texts.items()})
    except ValueError:
        raise bad from None


def filled(cell: Cell) -> Cell:
    """`cell` with the fields that apply to its mode and have a `fill` value filled in where
    unset (a generate cell's 64-token prompt and 32 generated tokens)."""
    fills = {
        f.name: f.fill
        for f in FIELDS
        if f.fill is not None and cell.mode in f.modes and getattr(cell, f.name) is None
    }
    return dataclasses.replace(cell, **fills) if fills else cell


def with_unit_batch(cell: Cell, always: bool = False) -> Cell:
    """`cell`, with batch "auto" (any batch, if `always`) replaced by the smallest batch its
    strategy can split."""
    if cell.batch != AUTO and not always:
        return cell
    return dataclasses.replace(cell, batch=batch_shards(dataclasses.replace(cell, batch=1)))


def _positive_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def validate(cell: Cell, devices=None) -> None:
    """Raise archs.UserError, in one line naming the valid choices, if `cell` cannot be measured.

    `devices`: those the cell may use (a target topology's, archbench.engine.topology); None:
    the devices JAX sees here."""
    spec = archs.get(cell.arch)
    size = spec.size(cell.size)
    spec.variant(cell.variant)  # an unknown one: UserError naming the family's variants
    check(cell, spec, size, devices)


def check(cell: Cell, spec: archs.ArchSpec, size: Size, devices=None) -> None:
    """`validate`'s checks of every field but the size and variant, which the caller has
    looked up already in `spec` (archbench.engine.plan.resolve), getting `size`."""
    if cell.mode not in MODES:
        raise unknown("mode", cell.mode, MODES)
    if cell.dtype not in DTYPES:
        raise unknown("dtype", cell.dtype, DTYPES)
    xla_options.check(cell.xla_options)  # an unknown set, or options this process lacks
    for f in FIELDS:  # a field set for a mode it does not apply to
        if cell.mode not in f.modes and getattr(cell, f.name) != f.default:
            raise UserError(f"{f.name} applies to mode {', '.join(f.modes)}, not {cell.mode}")
    if cell.mode == "generate":
        _validate_generate(cell, spec, size)
    if cell.remat is not None:
        _validate_remat(cell, spec)
    if not _positive_int(cell.batch):
        raise UserError(f"batch must be a positive integer, got {cell.batch!r}")
    if devices is not None:
        if not _positive_int(cell.devices) or cell.devices > len(devices):
            raise UserError(
                f"devices must be 1..{len(devices)} (the target topology's {devices[0].device_kind}"
                f" devices), got {cell.devices!r}"
            )
    elif not _positive_int(cell.devices) or cell.devices > len(jax.devices()):
        raise UserError(
            f"devices must be 1..{len(jax.devices())} (the {jax.default_backend()} devices JAX "
            f"sees), got {cell.devices!r}; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count"
            "=N gives N devices"
        )
    shards = batch_shards(cell)  # UserError for a bad strategy or mesh
    if cell.batch % shards:
        raise UserError(
            f"batch {cell.batch} is not divisible by the {shards} batch shards of "
            f"{cell.sharding} on {cell.devices} device(s); valid batches are multiples of {shards}"
        )
    if cell.seq_len is not None:
        if size.input.kind == "image":
            raise UserError(
                f"seq_len applies to sequence inputs; {cell.arch} takes {size.input.describe()}"
            )
        if not _positive_int(cell.seq_len):
            raise UserError(f"seq_len must be a positive integer, got {cell.seq_len!r}")


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
    if not can_remat(spec):
        raise UserError(
            f"{cell.arch} has no remat; the families that have it: {', '.join(remat_archs())}"
        )


def _validate_generate(cell: Cell, spec: archs.ArchSpec, size) -> None:
    if not can_decode(spec):
        raise UserError(
            f"mode generate needs a language model with a decode path "
            f"({', '.join(decode_archs())}); {cell.arch} is not one"
        )
    for name in ("prompt_len", "gen_len"):
        if not _positive_int(getattr(cell, name)):
            raise UserError(
                f"mode generate needs {name} a positive integer, got {getattr(cell, name)!r}"
            )
    if cell.devices != 1:
        raise UserError("mode generate runs on one device: devices 1")
    max_len = size.config.get("max_len")  # the positions a Transformer has; Mamba: none
    if max_len is not None and cell.prompt_len + cell.gen_len > max_len:
        raise UserError(
            f"prompt_len + gen_len = {cell.prompt_len + cell.gen_len} exceeds the {max_len} "
            f"positions of {cell.arch} {cell.size}"
        )


def batch_shards(cell: Cell) -> int:
    """How many pieces the batch is split into (the product of its mesh axes)."""
    axes = mesh_axes(cell.sharding, cell.devices, cell.mesh)
    return math.prod(axes[a] for a in batch_axes(cell.sharding, axes))


def input_spec(cell: Cell) -> InputSpec:
    """The input spec of the cell's size, with `cell.seq_len` applied."""
    return with_seq_len(archs.get(cell.arch).size(cell.size).input, cell.seq_len)


def with_seq_len(inputs: InputSpec, seq_len: int | None) -> InputSpec:
    """`inputs` at another sequence length (source and target alike for seq2seq); None: as is."""
    if seq_len is None:
        return inputs
    if inputs.kind == "seq2seq":
        return dataclasses.replace(inputs, shape=(seq_len, seq_len))
    return dataclasses.replace(inputs, shape=(seq_len, *inputs.shape[1:]))


def sequence_length(spec: InputSpec) -> int | None:
    """Time steps a recurrent model scans over: None for images, the longer side for seq2seq."""
    if spec.kind == "image":
        return None
    return max(spec.shape) if spec.kind == "seq2seq" else spec.shape[0]


# The keys a record has beside the cell's fields: derived from the cell and its registry spec.
DERIVED_KEYS = ("family", "params", "active_params", "task", "input", "tokens_per_example")
IDENTITY_KEYS = ("cell_id", *NAMES, *DERIVED_KEYS)  # a record's first keys, in this order


def cell_keys(cell: Cell, spec=None, inputs: InputSpec | None = None, counts=None) -> dict:
    """The keys that describe `cell` in a result: its id, every field (None where it does not
    apply to the cell's mode; the mesh as resolved, "data=2,model=2"), and what the registry
    says of it (params None if the model cannot be
    built; active_params, those one token uses, differ from params for a Mixture of Experts
    only). A resolved cell (archbench.engine.plan.Plan.keys) passes its `spec`, `inputs` and
    `counts` (params, active_params); left out, they are looked up and counted here."""
    spec = archs.get(cell.arch) if spec is None else spec
    inputs = with_seq_len(spec.size(cell.size).input, cell.seq_len) if inputs is None else inputs
    if counts is None:
        try:
            counts = archs.param_counts(cell.arch, cell.size)
        except Exception:  # a broken model still gets a result row, with status "error"
            counts = (None, None)
    params, active_params = counts
    axes = mesh_axes(cell.sharding, cell.devices, cell.mesh)
    applies = {f.name: cell.mode in f.modes for f in FIELDS}
    return {
        "cell_id": cell.id,
        **{name: v if applies[name] else None for name, v in dataclasses.asdict(cell).items()},
        "mesh": ",".join(f"{a}={n}" for a, n in axes.items()) if applies["mesh"] else None,
        "family": spec.family,
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
