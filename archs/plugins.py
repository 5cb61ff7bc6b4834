"""Architectures from outside the zoo: `archbench.register` and the plugins that call it.

A plugin is Python code that registers architectures with the same spec the built-in families
use (archs/registry.py). It comes in two ways:

- an installed package's entry point in the group "archbench.archs" (its object is a module,
  imported for its registrations, or a callable, called once): loaded once, just before the
  registry is first queried. A broken one is a one-line warning on stderr and is skipped, so
  the built-in families and the other plugins still work.
- `--plugin FILE.py` or `--plugin some.module` on `archbench run`, `list` and `train`
  (`load_file`): a broken one is a UserError naming it (one line, exit status 2).

Every registration is checked before it enters the registry (sizes, task, input, the module
built and traced from shapes on its tiny size), and a plugin that fails takes back whatever it
registered before failing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from archbench.archs.inputs import INPUT_KINDS, InputSpec
from archbench.archs.registry import _REGISTRY as _registry
from archbench.archs.registry import (
    TASKS,
    ArchSpec,
    Size,
    UserError,
    before_first_query,
    init_variables,
)
from archbench.archs.registry import register as _add
from archbench.archs.registry import unregister as _remove

GROUP = "archbench.archs"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")  # "-" separates the fields of a cell id
RANK = {"image": 3, "sequence": 2, "tokens": 1, "seq2seq": 2}  # dimensions of one example
INPUTS_OF = {"classify": ("image", "sequence", "tokens"), "lm": ("tokens",)}
INPUTS_OF["seq2seq"] = ("seq2seq",)

ORIGIN: dict[str, str] = {}  # architecture -> the plugin that registered it
_loaded: dict[str, list[str]] = {}  # a plugin's key -> the architectures it registered


def register(
    name: str,
    module: Any = None,
    *,
    sizes: Mapping[str, Size | Mapping[str, Any]],
    task: str = "classify",
    input: InputSpec | None = None,
    family: str | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
):
    """Register architecture `name`: `archbench list`, `run`, `measure` and recipes see it.

    Args:
      name: the architecture's name (letters, digits, "_" and "."), not yet registered.
      module: a Linen module class, an NNX module class (`flax.nnx.Module`), or a factory
        called as `module(**config, dtype=..., param_dtype=...)` that returns a Linen module.
        A class's fields (an NNX class's constructor) take the size's config, `dtype` and
        `param_dtype` (an NNX class also `rngs`); it is called as `model(x, train=...)`
        (an NNX model without a `train` argument is switched by `.train()` / `.eval()`).
        A classifier has `num_classes` (a field; of an NNX class, a constructor argument).
        Omitted: `register` returns a class decorator.
      sizes: size name -> `Size(config, input)`, or just the config with `input` below;
        "tiny" (for tests) and "small" (the matrix's default) are required.
      task: "classify", "lm" (next token over a tokens input) or "seq2seq".
      input: the `InputSpec` of sizes given as a bare config.
      family: a longer name for tables (default: the module's class name).
      variants: implementation variants (name -> module fields), as the built-in families.
    Returns:
      The registered ArchSpec (or, without `module`, a decorator returning the class).
    Raises:
      UserError naming the architecture, for a spec that does not fit.
    """
    if module is None:

        def decorate(cls):
            register(name, cls, sizes=sizes, task=task, input=input, family=family,
                     variants=variants)  # fmt: skip
            return cls

        return decorate
    spec = _spec(name, module, sizes, task, input, family, variants)
    _check_builds(spec)
    _add(spec)
    ORIGIN[name] = _current or "archbench.register"
    return spec


@dataclasses.dataclass(frozen=True)
class Factory:
    """A user's function that builds a Linen module, `fn(**config, dtype=, param_dtype=)`;
    a dataclass, as a registered module class is (the engine reads its options from fields:
    a factory has none)."""

    fn: Callable[..., Any]

    @property
    def __name__(self) -> str:
        return getattr(self.fn, "__name__", "factory")

    def __call__(self, **kwargs):
        return self.fn(**kwargs)


def _spec(name, module, sizes, task, input, family, variants) -> ArchSpec:
    def bad(msg: str) -> UserError:
        return UserError(f"architecture {name!r}: {msg}")

    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"architecture name {name!r}: use letters, digits, '_' and '.'")
    if name in _registry:
        by = ORIGIN.get(name, f"the built-in family {_registry[name].family}")
        raise bad(f"already registered (by {by})")
    if task not in TASKS:
        raise bad(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if _is_nnx_class(module):
        from archbench.archs import _nnx  # flax.nnx costs 0.35 s to import: only when used

        factory = _nnx.NNXFactory(module)
    elif isinstance(module, type):  # a Linen module class
        factory = module
    elif callable(module):
        factory = Factory(module)
    else:
        raise bad(f"module must be a Linen or NNX module class or a factory, got {module!r}")
    if not isinstance(sizes, Mapping) or not {"tiny", "small"} <= set(sizes):
        raise bad("sizes must map names to sizes and include 'tiny' and 'small'")
    table = {}
    for size, row in sizes.items():
        if isinstance(row, Mapping):
            if input is None:
                raise bad(f"size {size!r} is a bare config: pass input=InputSpec(...)")
            row = Size(dict(row), input)
        if not isinstance(row, Size) or not isinstance(row.input, InputSpec):
            raise bad(f"size {size!r} must be a Size(config, InputSpec) or a config dict")
        _check_input(bad, size, row.input, task)
        table[size] = row
    return ArchSpec(
        name=name,
        family=family or getattr(module, "__name__", name),
        module=factory,
        task=task,
        sizes=table,
        variants=dict(variants or {}),
    )


def _check_input(bad, size: str, spec: InputSpec, task: str) -> None:
    shape = spec.shape
    if (
        not isinstance(shape, tuple)
        or len(shape) != RANK[spec.kind]
        or not all(isinstance(d, int) and d > 0 for d in shape)
    ):
        dims = {"image": "(H, W, C)", "sequence": "(T, F)", "tokens": "(T,)"}
        dims["seq2seq"] = "(S, T)"
        raise bad(
            f"size {size!r}: input {spec.kind} needs shape {dims[spec.kind]} of positive "
            f"integers, got {shape!r}"
        )
    if spec.kind not in INPUTS_OF[task]:
        raise bad(
            f"size {size!r}: task {task} takes {' or '.join(INPUTS_OF[task])} input, "
            f"not {spec.kind} (input kinds: {', '.join(INPUT_KINDS)})"
        )


def _check_builds(spec: ArchSpec) -> None:
    """Every size constructs, and the tiny one runs (from shapes alone) on its input and gives
    the output its task expects."""
    for size in spec.sizes:
        try:
            spec.build(size)
        except Exception as e:
            raise UserError(f"architecture {spec.name!r}: size {size!r} {_why(e)}") from None
    tiny = spec.size("tiny")
    try:
        outputs = spec.num_outputs("tiny")
    except Exception:
        raise UserError(
            f"architecture {spec.name!r}: a classifier needs num_classes (a field of its "
            "module; of an NNX class, an argument of its constructor)"
        ) from None
    try:
        module = spec.build("tiny")

        def forward():  # the key made inside: no JAX backend starts (a job joins first)
            key = jax.random.key(0)
            x = tiny.input.example(key, 2)
            return module.apply(init_variables(module, tiny.input, key), x, train=False)

        out = jax.eval_shape(forward)
    except Exception as e:
        raise UserError(
            f"architecture {spec.name!r}: size 'tiny' does not run on its input "
            f"({tiny.input.describe()}): {_why(e)}"
        ) from None
    per_position = spec.task != "classify"
    want = (2, tiny.input.tokens_per_example, outputs) if per_position else (2, outputs)
    if getattr(out, "shape", None) != want or not jnp.issubdtype(out.dtype, jnp.floating):
        raise UserError(
            f"architecture {spec.name!r}: size 'tiny' gives {getattr(out, 'shape', out)}, "
            f"a {spec.task} model must give float logits of shape {want} for a batch of 2"
        )


def _why(e: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


_current: str | None = None  # the plugin being loaded, named in ORIGIN


def _load(label: str, key: str, load: Callable[[], Any]) -> list[str]:
    """Run `load` as plugin `label`; what it registered, or UserError naming it (and nothing
    of it stays registered)."""
    global _current
    if key in _loaded:  # the same file or module given twice: once is enough
        return _loaded[key]
    before = set(_registry)
    _current = label
    try:
        load()
    except Exception as e:  # anything a plugin raises becomes one line naming it
        for name in set(_registry) - before:
            _remove(name)
            ORIGIN.pop(name, None)
        why = str(e).splitlines()[0] if isinstance(e, UserError) and str(e) else _why(e)
        raise UserError(f"plugin {label}: {why}") from None
    finally:
        _current = None
    added = sorted(set(_registry) - before)
    _loaded[key] = added
    return added


def load_file(ref: str) -> list[str]:
    """Load `--plugin ref`: a Python file (a path ending in .py) or an importable module name.

    Returns the architectures it registered. Raises UserError naming it if it cannot be
    imported, raises, or registers something that does not fit.
    """
    label = repr(ref)
    if ref.endswith(".py") or "/" in ref or "\\" in ref:
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"plugin {label}: no such file")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = "archbench_plugin_" + re.sub(r"\W", "_", path.stem) + f"_{digest}"

        def load():
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses (Linen modules) look their module up here
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise

        return _load(label, str(path), load)
    if not all(part.isidentifier() for part in ref.split(".")):
        raise UserError(f"plugin {label}: neither a .py file nor a module name")
    return _load(label, ref, lambda: importlib.import_module(ref))


def load_files(refs) -> list[str]:
    """`load_file` of each of `refs` (None: none), in order; the architectures they added."""
    return [name for ref in refs or () for name in load_file(ref)]


def load_entry_points() -> list[str]:
    """Load every installed plugin (entry points of group "archbench.archs") once; a broken
    one is a warning on stderr, and the rest go on."""
    added = []
    for ep in metadata.entry_points(group=GROUP):

        def load(ep=ep):
            obj = ep.load()
            if callable(obj):
                obj()

        try:
            added += _load(f"{ep.name!r} ({ep.value})", f"entry point {ep.value}", load)
        except UserError as e:
            print(f"archbench: warning: {e}; skipped", file=sys.stderr)
    return added


before_first_query(load_entry_points)


def _is_nnx_class(obj) -> bool:
    """Whether `obj` is a Flax NNX module class; a module defining one has imported flax.nnx."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, type) and issubclass(obj, nnx.Module)
