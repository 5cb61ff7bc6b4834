"""Sharding strategies as data: a mesh of named axes, and rules that place every array.

A strategy is a set of parts, each a rule over a named mesh axis:

- `dp`   the batch is split over every mesh axis but "model"; the train state is replicated.
- `fsdp` the batch as for dp, and every parameter and its optimizer moments split along their
         largest dimension that the "data" axis divides (ZeRO-3 style: XLA inserts the
         all-gathers before use and reduce-scatters the gradients).
- `tp`   Megatron-style tensor parallelism over the "model" axis, by rules on parameter
         paths (TP_RULES): attention heads and the MLP's hidden units are split, so each
         attention block and MLP needs one all-reduce of its output. A family none of whose
         parameters match a rule has no tensor-parallel form: its cells are "unsupported".
- `ep`   expert parallelism (GShard, Lepikhin et al. 2021): the batch as for dp, and a
         Mixture of Experts' stacked expert weights (E, ...) split along E over the "data"
         axis (EP_RULES), so each device holds E / data experts and the tokens routed to them
         move instead of the weights; everything else is replicated. A family without
         experts has no expert-parallel form ("unsupported").

Parts combine with "+" (`fsdp+tp` over `--mesh data=2,model=2`). Without an explicit mesh,
tp uses all devices on "model" and the others all devices on "data".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from archbench.errors import Unsupported, UserError

PARTS = ("dp", "fsdp", "tp", "ep")
STRATEGIES = ("dp", "fsdp", "tp", "fsdp+tp", "ep")
AXES = ("data", "model")

# Tensor parallelism: (regex over a parameter's path, its spec over "model"). The paths are
# those of archbench.archs._transformer, archs/mixer.py and archs/llama.py (attention projections to (heads,
# head_dim), the output projection from them, the MLPs' layers); the regex matches a parameter and the
# optimizer moments that mirror it. Column-parallel layers split their outputs, row-parallel
# ones their inputs, so activations between the two stay split and only the output is reduced.
TP_RULES: tuple[tuple[str, tuple], ...] = (
    (r"/(query|key|value)/kernel$", (None, "model", None)),  # (D, H, Dh): heads split
    (r"/(query|key|value)/bias$", ("model", None)),  # (H, Dh)
    (r"/out/kernel$", ("model", None, None)),  # (H, Dh, D): row parallel
    # _transformer.Mlp, also as MLP-Mixer's token- and channel-mixing MLPs
    (r"/(mlp|token_mixing|channel_mixing)/fc/kernel$", (None, "model")),  # (D, F): column
    (r"/(mlp|token_mixing|channel_mixing)/fc/bias$", ("model",)),  # (F,)
    (r"/(mlp|token_mixing|channel_mixing)/proj/kernel$", ("model", None)),  # (F, D): row
    (r"/mlp/(w1|w3)/kernel$", (None, "model")),  # SwiGLU's gate and up projections (Llama)
    (r"/mlp/w2/kernel$", ("model", None)),  # SwiGLU's down projection
)

# Expert parallelism: archs/moe.py's stacked expert weights, (E, D, F) and (E, F, D), and
# their optimizer moments, split along the expert dimension over "data".
EP_RULES: tuple[tuple[str, tuple], ...] = ((r"/mlp/experts/(w1|w2|w3)$", ("data", None, None)),)


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
      UserError if the given mesh's sizes do not multiply to `devices`, or a strategy with tp
      has no "model" axis.
    """
    parts = parse_strategy(strategy)
    if mesh is None:
        if len(parts) > 1 and devices > 1:
            raise UserError(f"--sharding {strategy} needs --mesh, e.g. data=2,model=2")
        return {"model": devices} if parts == ("tp",) else {"data": devices}
    axes = parse_mesh(mesh)
    if math.prod(axes.values()) != devices:
        raise UserError(
            f"--mesh {mesh}: its sizes multiply to {math.prod(axes.values())}, "
            f"not to --devices {devices}"
        )
    if "tp" in parts and "model" not in axes:
        raise UserError(f"--sharding {strategy}: --mesh {mesh} has no 'model' axis")
    if "ep" in parts and "data" not in axes:
        raise UserError(f"--sharding {strategy}: --mesh {mesh} has no 'data' axis")
    return axes


def batch_axes(strategy: str, axes: dict[str, int]) -> tuple[str, ...]:
    """The mesh axes the batch is split over: every axis but "model" when tp uses it."""
    return tuple(a for a in axes if a != "model" or "tp" not in parse_strategy(strategy))


def path_text(path) -> str:
    """A pytree path as '/params/block_0/mlp/fc/kernel'."""
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        names.append(str(name))
    return "/" + "/".join(names)


def tp_spec(path: str, shape: Sequence[int], rules=TP_RULES) -> tuple | None:
    """The tensor-parallel spec of the array at `path`, or None if no rule names it."""
    for pattern, spec in rules:
        if re.search(pattern, path) and len(spec) == len(shape):
            return spec
    return None


def ep_spec(path: str, shape: Sequence[int]) -> tuple | None:
    """The expert-parallel spec of the array at `path`, or None if it holds no experts."""
    return tp_spec(path, shape, EP_RULES)


def fsdp_spec(shape: Sequence[int], size: int, taken: tuple) -> tuple:
    """`taken` with the largest free dimension that `size` divides put on "data"."""
    free = [i for i, d in enumerate(shape) if taken[i] is None and d % size == 0 and d >= size]
    if not free or size == 1:
        return taken
    i = max(free, key=lambda j: shape[j])
    return (*taken[:i], "data", *taken[i + 1 :])


@dataclass(frozen=True)
class Layout:
    """Where a cell's arrays live: the mesh, and the shardings of its state and batch."""

    strategy: str
    mesh: Mesh

    @property
    def axes(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def batch(self) -> NamedSharding:
        """The batch split on its leading axis over every axis but "model" (size > 1)."""
        names = batch_axes(self.strategy, dict(self.mesh.shape))
        return NamedSharding(self.mesh, P(names) if names else P())

    def __contains__(self, part: str) -> bool:
        return part in self.strategy.split("+")

    def state(self, abstract_state):
        """Shardings for every array of `abstract_state` (a pytree of ShapeDtypeStructs).

        Raises:
          Unsupported if tp (ep) is asked for and no parameter matches a tensor-parallel
          (expert-parallel) rule, or a matched dimension is not divisible by its axis.
        """
        matched = {"tp": [], "ep": []}

        def place(path, leaf):
            shape = tuple(getattr(leaf, "shape", ()))
            spec = (None,) * len(shape)
            text = path_text(path)
            for part, rule_of in (("tp", tp_spec), ("ep", ep_spec)):
                rule = rule_of(text, shape) if part in self and shape else None
                if rule is not None:
                    for dim, axis in zip(shape, rule, strict=True):
                        size = self.mesh.shape.get(axis, 1) if axis else 1
                        if dim % size:
                            raise Unsupported(
                                f"{text} has {dim} along its split, not divisible by {axis}={size}"
                            )
                    matched[part].append(text)
                    spec = rule
            if "fsdp" in self and shape:
                spec = fsdp_spec(shape, self.mesh.shape.get("data", 1), spec)
            return NamedSharding(self.mesh, P(*spec))

        shardings = jax.tree_util.tree_map_with_path(place, abstract_state)
        if "tp" in self and not matched["tp"]:
            raise Unsupported("no tensor-parallel rule matches this family's parameters")
        if "ep" in self and not matched["ep"]:
            raise Unsupported("no expert-parallel rule matches this family's parameters")
        return shardings


def layout(strategy: str, devices: Sequence[jax.Device], mesh: str | None = None) -> Layout:
    """The Layout of `strategy` over `devices` (a mesh from --mesh, or the strategy's own)."""
    axes = mesh_axes(strategy, len(devices), mesh)
    grid = np.array(devices).reshape(tuple(axes.values()))
    return Layout(strategy, Mesh(grid, tuple(axes)))
