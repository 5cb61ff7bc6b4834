"""The house: one import package, rooms whose imports point one way, no module over 400 lines.

The import graph is read with `ast` from the source, so it sees every import, those inside
functions too. Rooms are ranked; a module may import its own room and the rooms ranked below.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archbench.engine.outcome import RESULT_KEYS

ROOT = Path(__file__).resolve().parents[1]
# folder -> the package it is installed as (pyproject.toml's [tool.setuptools.package-dir])
PACKAGE_DIRS = {"bench": "archbench", "archs": "archbench.archs", "train": "archbench.train"}
# Rooms from the bottom up: each may import itself and the rooms before it. `archbench` is
# the package's own __init__ (the API), which may import any room but no room imports it.
ROOMS = [
    "archbench.errors",
    "archbench.units",
    "archbench.text",
    "archbench.archs",
    "archbench.train",
    "archbench.engine",
    "archbench.matrix",
    "archbench.report",
    "archbench.checks",
    "archbench.cli",
    "archbench",
]
# Modules of no room's rank that import nothing of archbench, so any room may use them.
LEAVES = ["archbench.errors", "archbench.units", "archbench.text", "archbench.engine.distributed"]
MAX_LINES = 400
MAX_FUNCTION_LINES = 60  # def to last line, docstring included
# offline: no dependencies, the build backend from this environment (setuptools, a dev extra)
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]


def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """The modules `path` (module `module`) imports anywhere in its body, resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports a.b if that is a module, else the module a
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (an imported name that is not a module counts
    as an import of the module that defines it)."""
    modules = package_modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def room_of(module: str) -> str:
    return max((r for r in ROOMS if module == r or module.startswith(r + ".")), key=len)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a closed path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_resolve(tmp_path):
    source = tmp_path / "session.py"
    source.write_text("from . import results\nfrom ..engine import measure\n")
    names = imported_names(source, "archbench.matrix.session")
    assert {"archbench.matrix.results", "archbench.engine.measure"} <= names


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_rooms():
    upward = []
    for module, edges in import_graph().items():
        rank = ROOMS.index(room_of(module))
        for target in edges:
            target_room = room_of(target)
            if target_room == "archbench" or ROOMS.index(target_room) > rank:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the room order: " + ", ".join(sorted(upward))


def test_no_file_imports_the_folders_as_top_level_packages():
    """`import bench`, `from train import ...`: works only from a checkout, never installed."""
    found = []
    for path in [*package_modules().values(), *sorted((ROOT / "tests").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in PACKAGE_DIRS
            ]
    assert not found, "imports of bench/archs/train by their folder names: " + ", ".join(found)


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in package_modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_leaves_import_nothing_of_archbench():
    graph = import_graph()
    assert {leaf: graph[leaf] for leaf in LEAVES if graph[leaf]} == {}


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """'file:line name' -> lines, for each function or method of `path` longer than `limit`."""
    long = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                long[f"{path.name}:{node.lineno} {node.name}"] = lines
    return long


def test_long_functions_are_found(tmp_path):
    source = tmp_path / "m.py"
    body = "".join(f"        x{i} = {i}\n" for i in range(6))
    source.write_text(f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}")
    assert long_functions(source, limit=6) == {"m.py:6 long": 7}
    assert long_functions(source, limit=7) == {}


def test_no_function_over_60_lines():
    long = {}
    for path in package_modules().values():
        long.update(long_functions(path))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {long}"


def _python(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("name", ["bench", "train", "archs"])
def test_the_folders_are_not_top_level_packages_even_in_the_checkout(name):
    """From the repository root Python would find the folders themselves; they refuse."""
    result = _python(f"import {name}", cwd=ROOT)
    assert result.returncode != 0
    assert "import archbench" in result.stderr
    assert "ImportError" in result.stderr


def test_installed_distribution_is_one_namespace_with_the_api(tmp_path):
    """`pip install .` (no deps, no build isolation: offline) into a folder of its own: the
    only top-level package is `archbench`, and its API measures a cell from a fresh process
    whose working directory is not the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for item in ("pyproject.toml", "README.md", "bench", "archs", "train"):
        if (ROOT / item).is_dir():
            shutil.copytree(
                ROOT / item, source / item, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / item, source / item)
    site = tmp_path / "site"
    subprocess.run(
        [*PIP_INSTALL, "--target", str(site), str(source)],
        check=True,
        capture_output=True,
    )
    top = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")} - {"bin"}
    assert top == {"archbench"}
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import json, archbench\n"
        f"assert archbench.__file__.startswith({str(site)!r}), archbench.__file__\n"
        "r = archbench.measure('mlp', 'tiny', mode='train', batch=8, target_s=0.1)\n"
        "print(json.dumps({'keys': list(r), 'status': r['status'], 'params': r['params'],"
        " 'archs': archbench.list_archs('ml*')}))"
    )
    result = _python(code, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["keys"] == list(RESULT_KEYS)
    assert out["status"] == "ok"
    assert out["params"] == 25_450  # mlp tiny, as `archbench list` counts it
    assert out["archs"] == ["mlp"]
    for name in ("bench", "train", "archs"):
        assert _python(f"import {name}", cwd=tmp_path, env=env).returncode != 0


def test_api_measure_gives_the_record_the_matrix_stores(tmp_path):
    import archbench
    from archbench.cli.main import main
    from archbench.matrix import results

    out = tmp_path / "r.json"
    assert (
        main(
            [
                "run",
                "--arch",
                "gpt",
                "--size",
                "tiny",
                "--mode",
                "infer",
                "--batch",
                "4",
                "--target-s",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (stored,) = [row["extra_info"] for row in results.load_results(out)["benchmarks"]]
    record = archbench.measure("gpt", "tiny", mode="infer", batch=4, target_s=0.1)
    assert list(record) == list(stored)
    for key in (
        "cell_id",
        "params",
        "flops_per_step",
        "bytes_per_step",
        "argument_bytes",
        "output_bytes",
        "temp_bytes",
        "compiled_bytes",
        "status",
        "tokens_per_example",
    ):
        assert record[key] == stored[key], key


def test_api_errors_are_user_errors():
    import archbench

    with pytest.raises(archbench.UserError, match="valid"):
        archbench.measure("nosuch", "tiny")
    with pytest.raises(archbench.UserError, match="dtype"):
        archbench.measure("mlp", "tiny", dtype="float8")


def test_readme_python_api_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    result = _python(example, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["['resnet']", "124439808"]
    step_s, flops, compiled = (float(v) for v in lines[2].split())
    assert step_s > 0 and flops > 0 and compiled > 0
