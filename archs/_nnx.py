"""A Linen face for a Flax NNX module class, so that NNX models run through the one pipeline.

The benchmark and the fit loop know one model contract: a Linen module built from its size's
config with `dtype` and `param_dtype`, initialised by `module.init` and applied by
`module.apply(variables, x, train=...)` inside the pure, jitted train step. `NNXModel` keeps
that contract for an `nnx.Module` class: at init it constructs the NNX model and stores its
state as Linen variables (nnx.Param in "params", nnx.BatchStat in "batch_stats", ...); at
apply it rebuilds the model's structure from shapes alone (`nnx.eval_shape`, so no
initialiser runs inside the timed step), merges the variables back in (`nnx.split` /
`nnx.merge`) and calls it. The jitted program is the NNX model's forward pass and nothing
else; tests/test_nnx.py checks an NNX twin of `mlp` against the Linen one (same parameters,
same XLA FLOPs) and README.md gives the measured overhead.

Unlike `flax.nnx.bridge.ToLinen`, which constructs (and so initialises) the NNX model on every
apply and leaves XLA to drop the dead initialisers, nothing is initialised after `init`.
Parameter paths keep the NNX attribute names, with list indices as strings ("layers/0/kernel"),
as checkpoints and sharding rules expect string keys.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import variablelib

# The Linen rng streams an NNX model may draw from: "params" at init, "dropout" in training.
STREAMS = ("params", "dropout")


def is_nnx_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, nnx.Module)


def _collection(variable) -> str:
    """The Linen collection of an NNX variable type: Param -> params, BatchStat -> batch_stats."""
    return variablelib.variable_name_from_type(type(variable), allow_register=True)


def _key(path) -> tuple[str, ...]:
    return tuple(str(p) for p in path)


class NNXModel(nn.Module):
    """An NNX module class behind the Linen contract of archbench's registry.

    nnx_class: the NNX module class; it takes the size's config, `dtype`, `param_dtype` and
      `rngs` (keyword), and is called as `model(x)` or, if its `__call__` takes one,
      `model(x, train=...)`; without a `train` argument, `model.train()` / `model.eval()`
      switch its Dropout and BatchNorm layers.
    config: the size's config.
    """

    nnx_class: Any
    config: Mapping[str, Any] = FrozenDict()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def num_classes(self) -> int:
        """A classifier's classes (the registry reads them from the module): the config's, else
        the NNX constructor's default."""
        if "num_classes" in self.config:
            return self.config["num_classes"]
        param = inspect.signature(self.nnx_class.__init__).parameters.get("num_classes")
        if param is None or param.default is inspect.Parameter.empty:
            raise AttributeError(f"{self.nnx_class.__name__} has no num_classes")
        return param.default

    def _construct(self, rngs: nnx.Rngs) -> nnx.Module:
        return self.nnx_class(
            **self.config, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs
        )

    def _takes_train(self) -> bool:
        return "train" in inspect.signature(self.nnx_class.__call__).parameters

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.is_initializing():
            rngs = {s: self.make_rng(s) for s in STREAMS if self.has_rng(s)}
            model = self._construct(nnx.Rngs(**rngs))
            self._store(model, initializing=True)
        else:
            model = self._restore()
        if self._takes_train():
            y = model(x, train=train)
        else:
            (model.train if train else model.eval)()
            y = model(x)
        if not self.is_initializing():
            self._store(model, initializing=False)  # BatchNorm statistics, when mutable
        return y

    def _store(self, model: nnx.Module, initializing: bool) -> None:
        """Put the model's state (all but its rng streams) into Linen variables, one per
        top-level attribute, nested by path with string keys."""
        trees: dict[str, dict] = {}
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState))):
            collection = _collection(variable)
            if not initializing and not self.is_mutable_collection(collection):
                continue
            node = trees.setdefault(collection, {})
            *parents, leaf = _key(path)
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = variable.get_value()
        for collection, tree in trees.items():
            if self.is_mutable_collection(collection):
                for name, value in tree.items():
                    self.put_variable(collection, name, value)

    def _restore(self) -> nnx.Module:
        """The model rebuilt from shapes, its state taken from the Linen variables and fresh
        rng streams from Linen's (a stream Linen does not have gets a fixed key: dropout in
        eval mode never draws from it)."""
        abstract = nnx.eval_shape(lambda: self._construct(nnx.Rngs(**dict.fromkeys(STREAMS, 0))))
        graphdef, state = nnx.split(abstract)
        flat = {}
        for path, variable in nnx.to_flat_state(state):
            if isinstance(variable, nnx.RngKey):
                tag = variable.get_metadata().get("tag")
                value = self.make_rng(tag) if self.has_rng(tag) else jax.random.key(0)
            elif isinstance(variable, nnx.RngCount):
                value = jnp.zeros((), jnp.uint32)
            else:
                node = self.variables[_collection(variable)]
                for p in _key(path):
                    node = node[p]
                value = node
            flat[path] = variable.replace(value)
        return nnx.merge(graphdef, nnx.from_flat_state(flat))


@dataclasses.dataclass(frozen=True)
class NNXFactory:
    """What the registry calls to build a size: `NNXFactory(cls)(**config, dtype=...,
    param_dtype=...)` is the Linen `NNXModel` of `cls` with that config. A dataclass, as a
    registered module is (the engine reads a family's options from its fields)."""

    nnx_class: type

    @property
    def __name__(self) -> str:
        return self.nnx_class.__name__

    def __call__(self, *, dtype=jnp.float32, param_dtype=jnp.float32, **config) -> NNXModel:
        return NNXModel(self.nnx_class, FrozenDict(config), dtype, param_dtype)
