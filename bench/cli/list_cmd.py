"""`archbench list`: every architecture and size with its parameter counts.

Counting a size's parameters from shapes traces its model (0.3 to 4 s each; the whole zoo
took 20 to 40 s on 2 CPU cores), so the counts of the built-in families are cached in
$ARCHBENCH_CACHE_DIR (default ~/.cache/archbench), in a file keyed by the code they depend
on: the source of archbench.archs (every module and size table) and the jax and flax
versions. A change to any of them is a new key, so a cached count is always the count the
code gives; published counts are not used in their place, since only a test run checks
them against the code. A plugin's architectures are counted on every call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from archbench import archs
from archbench.archs import plugins
from archbench.engine.cell import can_remat
from archbench.errors import UserError
from archbench.text import format_table

HELP = "architectures, sizes and parameter counts"


def cache_dir() -> Path:
    return Path(os.environ.get("ARCHBENCH_CACHE_DIR") or "~/.cache/archbench").expanduser()


def code_key() -> str:
    """A digest of what the built-in families' parameter counts depend on."""
    digest = hashlib.sha256()
    for dist in ("jax", "flax"):
        digest.update(f"{dist}=={metadata.version(dist)}\n".encode())
    for path in sorted(Path(archs.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def _built_in(name: str) -> bool:
    module = archs.get(name).module
    return name not in plugins.ORIGIN and module.__module__.startswith("archbench.archs.")


class CountCache:
    """{"arch/size": [params, active]} for the built-in families, read and written as one
    JSON file per code_key(); an unreadable or unwritable cache is only a slower list."""

    def __init__(self):
        self.path = cache_dir() / f"param-counts-{code_key()}.json"
        try:
            self.counts = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.counts = {}
        if not isinstance(self.counts, dict):
            self.counts = {}
        self.added = 0

    def get(self, name: str, size: str) -> tuple[int, int]:
        if not _built_in(name):
            return archs.param_counts(name, size)
        hit = self.counts.get(f"{name}/{size}")
        if isinstance(hit, list) and len(hit) == 2 and all(isinstance(n, int) for n in hit):
            return hit[0], hit[1]
        counts = archs.param_counts(name, size)
        self.counts[f"{name}/{size}"] = list(counts)
        self.added += 1
        return counts

    def save(self) -> None:
        if not self.added:
            return
        tmp = None
        try:  # a temporary file, then a rename: a reader sees the old cache or the new
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.counts, f, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def list_rows(pattern: str = "*") -> list[dict]:
    """One row per (architecture, size) with its parameter count, counted from shapes alone,
    and its active parameters (those one token uses: fewer for a Mixture of Experts)."""
    cache = CountCache()
    todo = [c for c in archs.cells(pattern) if _built_in(c[0]) and "/".join(c) not in cache.counts]
    if len(todo) > 8:  # the first list of this version of the code: say why it waits
        print(
            f"archbench: counting the parameters of {len(todo)} sizes from their shapes "
            f"(once for this version of the code; cached in {cache.path.parent})",
            file=sys.stderr,
        )
    rows = []
    for name, size in archs.cells(pattern):
        spec = archs.get(name)
        s = spec.size(size)
        params, active_params = cache.get(name, size)
        rows.append(
            {
                "arch": name,
                "family": spec.family,
                "size": size,
                "params": params,
                "active_params": active_params,
                "published_params": s.published_params,
                "published_active_params": s.published_active_params,
                "input": s.input.describe(),
                "task": spec.task,
                "outputs": spec.num_outputs(size),
                "canonical": s.canonical,
                "source": s.source or None,
                "variants": list(spec.variants),  # for --variant
                "remat": can_remat(spec),  # whether --remat applies to its train cells
                "plugin": plugins.ORIGIN.get(name),  # None: a built-in family
            }
        )
    cache.save()
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="wildcard over names, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    add_plugin_argument(p)


def add_plugin_argument(p: argparse.ArgumentParser) -> None:
    """--plugin, shared by list, run and train."""
    p.add_argument(
        "--plugin",
        action="append",
        metavar="FILE.py|MODULE",
        help="load architectures from a Python file or module that calls archbench.register "
        "(repeatable; installed plugins load by themselves)",
    )


def run(args) -> int:
    plugins.load_files(args.plugin)
    if not archs.names(args.pattern):
        raise UserError(
            f"no architecture matches {args.pattern!r}; valid: {', '.join(archs.names())}"
        )
    rows = list_rows(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(
            format_table(
                rows,
                ["arch", "family", "size", "params", "active_params", "input", "task", "canonical"],
            )
        )
    return 0
