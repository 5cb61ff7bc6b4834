"""The architecture registry: a name maps to a spec (module, sizes, input, task)."""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs.inputs import InputSpec
from archbench.errors import UserError, unknown

TASKS = ("classify", "lm", "seq2seq")


@dataclass(frozen=True)
class Size:
    """One row of a family's size table.

    config: keyword arguments of the Linen module.
    input: the example shape this size is built for.
    canonical: the published model this size reproduces (e.g. "ResNet-50"), or None.
    published_params: its published parameter count, where the source gives an exact one.
    published_active_params: the published parameters used per token, where a sparse model's
      source gives them (a Mixture of Experts runs k of its E experts per token).
    source: paper, table or tutorial the size comes from.
    """

    config: Mapping[str, Any]
    input: InputSpec
    canonical: str | None = None
    published_params: int | None = None
    published_active_params: int | None = None
    source: str = ""


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its Linen module class, task and size table."""

    name: str
    family: str
    module: type[nn.Module]
    task: str
    sizes: Mapping[str, Size] = field(default_factory=dict)
    # Implementation variants of the same computation (same parameters, same outputs): a name
    # maps to the module fields it sets. The module's own defaults are the default variant.
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The module fields of the twin whose XLA FLOP count is the model's work (the engine's
    # model_flops_per_step, which MFU counts), where the default implementation's count is
    # not: a Mixture of Experts whose grouped matmul XLA counts with its padding, or as every
    # expert on every row. Empty: the default implementation counts itself.
    model_flops_fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} not in {TASKS}")
        if "tiny" not in self.sizes or "small" not in self.sizes:
            raise ValueError(f"{self.name}: every architecture needs 'tiny' and 'small' sizes")

    def size(self, name: str) -> Size:
        try:
            return self.sizes[name]
        except KeyError:
            raise unknown(f"size for {self.name}", name, self.sizes) from None

    def variant(self, name: str | None) -> Mapping[str, Any]:
        """The module fields of implementation variant `name`; None is the default ({})."""
        if name is None:
            return {}
        if name not in self.variants:
            valid = ", ".join(self.variants) or "none (it has one implementation)"
            raise UserError(f"unknown variant {name!r} of {self.name}; valid: {valid}")
        return self.variants[name]

    def builder(self, size: str) -> Callable[..., nn.Module]:
        """The module class with `size`'s config bound, parameters in float32: call it with the
        compute `dtype` and any field to override (as `build` does)."""
        return functools.partial(self.module, **self.size(size).config, param_dtype=jnp.float32)

    def build(
        self, size: str, dtype=jnp.float32, param_dtype=jnp.float32, **overrides
    ) -> nn.Module:
        """The Linen module of `size`, computing in `dtype` with parameters in `param_dtype`."""
        return self.builder(size)(dtype=dtype, param_dtype=param_dtype, **overrides)

    def num_outputs(self, size: str) -> int:
        """Classes for a classifier, vocabulary for a language or seq2seq model."""
        if self.task == "classify":
            return self.build(size).num_classes
        return self.size(size).input.vocab_size


_REGISTRY: dict[str, ArchSpec] = {}
# Run once, just before the registry is first queried: archbench.archs.plugins loads the
# installed plugins (entry points) here, late enough that `import archbench` has finished.
_FIRST_QUERY: list = []


def before_first_query(hook) -> None:
    """Call `hook()` once, before the first `get` or `names`."""
    _FIRST_QUERY.append(hook)


def _first_query() -> None:
    while _FIRST_QUERY:  # popped before running: a hook that queries the registry is fine
        _FIRST_QUERY.pop(0)()


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> ArchSpec | None:
    """Remove `name` (a plugin that failed halfway, a test's own architecture)."""
    return _REGISTRY.pop(name, None)


def get(name: str) -> ArchSpec:
    """The spec of `name`; an unknown name raises UnknownNameError listing the valid ones."""
    _first_query()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown("architecture", name, sorted(_REGISTRY)) from None


def names(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style wildcard, sorted."""
    _first_query()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def cells(pattern: str = "*", sizes: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(arch, size) pairs for every registered architecture matching `pattern`."""
    return [(n, s) for n in names(pattern) for s in get(n).sizes if sizes is None or s in sizes]


def init_variables(module: nn.Module, input_spec: InputSpec, key: jax.Array, batch: int = 1):
    """Initialise all variable collections (params, batch_stats, ...) for a batch of zeros."""
    shapes = jax.eval_shape(lambda k: input_spec.example(k, batch), jax.random.key(0))
    x = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    try:
        hash(module)
    except TypeError:  # a plugin's module with an unhashable field: traced on every call
        return nn.unbox(jax.jit(functools.partial(_init_boxed, module))(key, x))
    return nn.unbox(_init_jitted(module, key, x))  # plain arrays: no consumer sees the boxes


def _init_boxed(module: nn.Module, key: jax.Array, x):
    return module.init({"params": key, "dropout": key}, x, train=False)


# Jitted, so that all initialisers compile as one program: run eagerly, each parameter shape
# compiles its own random-number kernel, which dominates a tiny model's init time. The module
# is static (flax modules hash and compare by their fields): the same model initialised
# again, with any key, reuses its trace and executable.
_init_jitted = jax.jit(_init_boxed, static_argnums=0)


def logical_axes(module: nn.Module, input_spec: InputSpec) -> dict[tuple[str, ...], tuple]:
    """Each parameter's logical axis names (archbench.archs._logical), from shapes alone.

    Returns:
      {path in the params tree, as a tuple of names: one name or None per dimension}; a
      parameter its family does not name has None for every dimension.
    """
    boxed = jax.eval_shape(
        lambda k: _init_boxed(module, k, input_spec.example(k, 1)), jax.random.key(0)
    )["params"]
    is_box = lambda a: isinstance(a, nn.Partitioned)  # noqa: E731
    names = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(boxed, is_leaf=is_box):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        names[keys] = tuple(leaf.names) if is_box(leaf) else (None,) * len(leaf.shape)
    return names


def count_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _param_shapes(name: str, size: str):
    """(module, its parameters' ShapeDtypeStructs): nothing is allocated."""
    spec = get(name)
    module = spec.build(size)
    return module, _shapes_of(module, spec.size(size).input)


def _shapes_of(module: nn.Module, input_spec: InputSpec):
    shapes = jax.eval_shape(lambda k: init_variables(module, input_spec, k), jax.random.key(0))
    return shapes["params"]


def param_count(name: str, size: str) -> int:
    """Trainable parameters of (name, size), from shapes alone: nothing is allocated."""
    return count_params(_param_shapes(name, size)[1])


def module_param_counts(module: nn.Module, input_spec: InputSpec) -> tuple[int, int]:
    """(parameters, active parameters) of a built `module` taking `input_spec`, from one
    evaluation of its shapes (nothing is allocated); see `param_counts`."""
    params = _shapes_of(module, input_spec)
    active = getattr(module, "active_param_count", None)
    total = count_params(params)
    return total, (active(params) if active is not None else total)


def param_counts(name: str, size: str) -> tuple[int, int]:
    """(parameters, active parameters) of (name, size) from one evaluation of the shapes.

    Active parameters are those one token (or example) uses. A module with a method
    `active_param_count(params) -> int` says how many (a Mixture of Experts: all but its idle
    experts); for every other (dense) family they are all the parameters.
    """
    spec = get(name)
    return module_param_counts(spec.build(size), spec.size(size).input)


def active_param_count(name: str, size: str) -> int:
    """Parameters one token (or example) of (name, size) uses, from shapes alone."""
    return param_counts(name, size)[1]
