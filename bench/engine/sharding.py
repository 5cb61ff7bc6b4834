"""Sharding strategies as data: tables from the families' logical axes to a mesh's axes.

Every family names its parameters' dimensions with logical axes (archbench.archs._logical:
`embed`, `mlp`, `heads`, `kv_heads`, `kv`, `vocab`, `expert`, `conv_in`, ...), and
`archs.logical_axes(module, input_spec)` reads them from shapes. A strategy is a set of parts
(PARTS), each a table from logical axes to the mesh axes "data" and "model"; no table names a
layer, and a new strategy is a new table:

- `dp`   no table: the batch is split over every mesh axis but "model"; the state replicated.
- `fsdp` no table, a fill: every parameter and its optimizer moments split along their
         largest dimension that the "data" axis divides, whatever its name (ZeRO-3 style: XLA
         inserts the all-gathers before use and reduce-scatters the gradients). One array
         split once over "data" holds 1/data of it per device, as any name-based choice would.
- `tp`   Megatron-style tensor parallelism: heads, kv_heads and mlp on "model". A family
         pairs its dense layers' names, (embed, mlp) then (mlp, embed), (embed, heads, kv)
         then (heads, kv, embed), so the first of a pair is split by columns and the second
         by rows: activations between them stay split and only each block's output is
         all-reduced. vocab stays whole (GPT-2's 50,257 tokens divide by nothing).
- `ep`   expert parallelism (GShard, Lepikhin et al. 2021): expert on "data", so each device
         holds E / data of a Mixture of Experts' stacked experts and the tokens routed to
         them move instead of the weights; the batch as for dp.

A part with a table needs the family to name at least one of its logical axes: a family
naming none (tp for a convolutional network, ep without experts) has no form for it, and its
cells are "unsupported", as are those whose named dimension the mesh axis does not divide.
Optimizer moments mirror the parameters' paths and get their names. Parts combine with "+"
(`fsdp+tp` over `--mesh data=2,model=2`): the tables first, then the fill on a free
dimension. Without an explicit mesh, a part uses all devices on its one mesh axis ("model"
for tp), and the others all devices on "data". Whatever the strategy, the activations a
family names "batch" stay split as the batch is (`Layout.activations`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from archbench.archs import _logical
from archbench.errors import Unsupported, UserError

AXES = ("data", "model")


@dataclass(frozen=True)
class Part:
    """One part of a strategy: logical axes -> mesh axes, and what else it splits."""

    table: Mapping[str, str] = field(default_factory=dict)  # logical axis -> mesh axis
    fill: str | None = None  # a mesh axis put on every array's largest free dimension it divides
    splits_batch: bool = True  # whether the batch is split over this part's mesh axes too

    @property
    def mesh_axes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.table.values(), *([self.fill] if self.fill else [])]))


PARTS: dict[str, Part] = {
    "dp": Part(),
    "fsdp": Part(fill="data"),
    "tp": Part({"heads": "model", "kv_heads": "model", "mlp": "model"}, splits_batch=False),
    "ep": Part({"expert": "data"}),
}
STRATEGIES = ("dp", "fsdp", "tp", "fsdp+tp", "ep")  # the parts' combinations on offer


def parse_strategy(text: str) -> tuple[str, ...]:
    parts = tuple(text.split("+"))
    if text not in STRATEGIES or len(set(parts)) != len(parts):
        raise UserError(f"unknown sharding {text!r}; valid: {', '.join(STRATEGIES)}")
    return parts


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,model=2' -> {"data": 2, "model": 2}; raises UserError in one line."""
    axes: dict[str, int] = {}
    for item in text.split(","):
        name, _, size = item.strip().partition("=")
        if name not in AXES or name in axes or not size.isdigit() or int(size) < 1:
            raise UserError(
                f"--mesh {text!r}: expected comma-separated AXIS=SIZE with AXIS in "
                f"{', '.join(AXES)} (each once) and SIZE a positive integer"
            )
        axes[name] = int(size)
    return axes


def mesh_axes(strategy: str, devices: int, mesh: str | None) -> dict[str, int]:
    """The mesh's named axes and sizes for `strategy` on `devices` devices.

    Raises:
      UserError if the given mesh's sizes do not multiply to `devices`, or lacks an axis one
      of the strategy's tables maps to (tp's "model", ep's "data").
    """
    parts = parse_strategy(strategy)
    if mesh is None:
        if len(parts) > 1 and devices > 1:
            raise UserError(f"--sharding {strategy} needs --mesh, e.g. data=2,model=2")
        own = PARTS[parts[0]].mesh_axes
        return {own[0] if len(own) == 1 else "data": devices}
    axes = parse_mesh(mesh)
    if math.prod(axes.values()) != devices:
        raise UserError(
            f"--mesh {mesh}: its sizes multiply to {math.prod(axes.values())}, "
            f"not to --devices {devices}"
        )
    for part in parts:
        for axis in dict.fromkeys(PARTS[part].table.values()):
            if axis not in axes:
                raise UserError(f"--sharding {strategy}: --mesh {mesh} has no {axis!r} axis")
    return axes


def batch_axes(strategy: str, axes: dict[str, int]) -> tuple[str, ...]:
    """The mesh axes the batch is split over: all but those of a part that keeps the batch
    whole (tp's "model")."""
    kept = {
        a for p in parse_strategy(strategy) if not PARTS[p].splits_batch for a in PARTS[p].mesh_axes
    }
    return tuple(a for a in axes if a not in kept)


def path_keys(path) -> tuple[str, ...]:
    """A pytree path as names: ('params', 'block_0', 'mlp', 'fc', 'kernel')."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def path_text(path) -> str:
    """A pytree path as '/params/block_0/mlp/fc/kernel'."""
    return "/" + "/".join(path_keys(path))


def names_at(keys: tuple[str, ...], ndim: int, logical: Mapping[tuple[str, ...], tuple]) -> tuple:
    """The logical names of the array at `keys` in the train state: those of the parameter
    whose path is the longest tail of `keys` (the parameter itself, or an optimizer moment
    that mirrors it), with as many dimensions; None for each dimension otherwise."""
    for start in range(len(keys)):
        names = logical.get(keys[start:])
        if names is not None and len(names) == ndim:
            return tuple(names)
    return (None,) * ndim


def fsdp_spec(shape: Sequence[int], size: int, taken: tuple, axis: str = "data") -> tuple:
    """`taken` with the largest free dimension that `size` divides put on `axis`."""
    free = [i for i, d in enumerate(shape) if taken[i] is None and d % size == 0 and d >= size]
    if not free or size == 1 or axis in taken:
        return taken
    i = max(free, key=lambda j: shape[j])
    return (*taken[:i], axis, *taken[i + 1 :])


def spec_of(names: tuple, shape: Sequence[int], parts: Sequence[str], sizes: Mapping[str, int]):
    """The mesh axis of each dimension (None: whole): every part's table over the dimensions'
    logical names, first come first served per mesh axis, then the parts' fills.

    Raises:
      Unsupported if a mesh axis does not divide the dimension its table puts on it.
    """
    spec = [None] * len(shape)
    for part in parts:
        for i, name in enumerate(names):
            axis = PARTS[part].table.get(name)
            if axis is None or spec[i] is not None or axis in spec:
                continue
            if shape[i] % sizes.get(axis, 1):
                raise Unsupported(
                    f"{part}: {shape[i]} along {name!r} is not divisible by {axis}="
                    f"{sizes.get(axis, 1)}"
                )
            spec[i] = axis
    for part in parts:
        if PARTS[part].fill:
            fill = PARTS[part].fill
            spec = list(fsdp_spec(shape, sizes.get(fill, 1), tuple(spec), fill))
    return tuple(spec)


@dataclass(frozen=True)
class Layout:
    """Where a cell's arrays live: the mesh, and the shardings of its state and batch."""

    strategy: str
    mesh: Mesh

    @property
    def axes(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def parts(self) -> tuple[str, ...]:
        return parse_strategy(self.strategy)

    @property
    def batch(self) -> NamedSharding:
        """The batch split on its leading axis over every axis but "model" (size > 1)."""
        names = batch_axes(self.strategy, dict(self.mesh.shape))
        return NamedSharding(self.mesh, P(names) if names else P())

    def __contains__(self, part: str) -> bool:
        return part in self.parts

    def activations(self):
        """A context for tracing a step: the activations a family marks as split by batch
        (archs._logical.batch_split) are constrained to the batch's sharding. Without it XLA
        may resolve the batch split and an FSDP weight split over the same mesh axis by
        gathering the batch, and every device would hold the whole batch's activations.
        On one device: no constraint."""
        if self.mesh.size == 1:
            return contextlib.nullcontext()
        return _logical.split_batches_as(self.batch)

    def traced(self, jitted):
        """`jitted` (a jax.jit function), called inside `activations()`: whenever it traces,
        at its first call, it sees the constraints, as the engine's measured step does."""

        def call(*args):
            with self.activations():
                return jitted(*args)

        return call

    def state(self, abstract_state, logical: Mapping[tuple[str, ...], tuple] | None = None):
        """Shardings for every array of `abstract_state` (a pytree of ShapeDtypeStructs).

        Args:
          abstract_state: the train state's shapes (jax.eval_shape of its creation).
          logical: the model's parameters' logical axes, archs.logical_axes(module, input):
            {path in the params tree: one name per dimension}. None: no parameter is named,
            so only the strategies without a table (dp, fsdp) have a form.
        Raises:
          Unsupported if a part with a table (tp, ep) meets a family that names none of its
          logical axes, or a named dimension is not divisible by its mesh axis.
        """
        logical = logical or {}
        named = {name for names in logical.values() for name in names}
        for part in self.parts:
            table = PARTS[part].table
            if table and not named & set(table):
                raise Unsupported(
                    f"{part} splits {', '.join(table)}; this family names none of them"
                )
        sizes = dict(self.mesh.shape)

        def place(path, leaf):
            shape = tuple(getattr(leaf, "shape", ()))
            names = names_at(path_keys(path), len(shape), logical)
            return NamedSharding(self.mesh, P(*spec_of(names, shape, self.parts, sizes)))

        return jax.tree_util.tree_map_with_path(place, abstract_state)


def layout(strategy: str, devices: Sequence[jax.Device], mesh: str | None = None) -> Layout:
    """The Layout of `strategy` over `devices` (a mesh from --mesh, or the strategy's own)."""
    axes = mesh_axes(strategy, len(devices), mesh)
    grid = np.array(devices).reshape(tuple(axes.values()))
    return Layout(strategy, Mesh(grid, tuple(axes)))
