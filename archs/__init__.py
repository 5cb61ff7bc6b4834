"""The architecture zoo: pure Linen modules, one file per family, and their registry.

Importing this package imports every family module in it; each registers its
architectures. A new family is a new file here that calls `register`.
"""

import importlib
import pkgutil

from archbench.archs.inputs import InputSpec
from archbench.archs.registry import (
    ArchSpec,
    Size,
    active_param_count,
    cells,
    count_params,
    get,
    init_variables,
    logical_axes,
    module_param_counts,
    names,
    param_count,
    param_counts,
    register,
)
from archbench.errors import UnknownNameError, Unsupported, UserError  # the zoo's errors too

__all__ = [
    "ArchSpec",
    "InputSpec",
    "Size",
    "UnknownNameError",
    "Unsupported",
    "UserError",
    "active_param_count",
    "cells",
    "count_params",
    "get",
    "init_variables",
    "logical_axes",
    "module_param_counts",
    "names",
    "param_count",
    "param_counts",
    "register",
]

if __name__ != "archbench.archs":  # one module, one name: never also a top-level `archs`
    raise ImportError(
        f"{__name__!r}: the folder archs/ is the package archbench.archs; "
        "import archbench.archs (pip install -e . in the repository)"
    )

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "registry" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
