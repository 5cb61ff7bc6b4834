"""The docs' commands and Python, checked without running any (tests/test_docs.py's guards).

Every `archbench ...`, `python -m archbench...`, `pytest ...` and `pytest-benchmark ...`
command of a doc's sh, bash and console blocks (those the tests skip too) goes through the
real argparse parser of its program, abbreviations refused: a renamed or removed option or
subcommand, a missing value or a stray argument is a problem. Commands are found as a shell
finds them: in `&&`, `|`, `;` and `&` lists, after `NAME=value` prefixes and wrappers (srun,
time), and inside quoted commands (`bash -c '...'`, `--command "..."`); `$NAME` is the block's
own assignment of NAME, else a placeholder, `1`.

Inline code in the prose that starts as such a command may hold placeholders (RECIPE, N,
`[--mode ...]`), so only its subcommand and option names are checked; an inline dotted name
`archbench.x.y` must exist. Python blocks are compiled, and every archbench module and name
they import, or reach as an attribute of one, must exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import io
import re
import shlex
from pathlib import Path
from unittest import mock

PLACEHOLDER = "1"
WRAPPERS = {"srun", "mpirun", "mpiexec", "time", "nohup", "exec", "env", "sudo"}
CONTROL = {"&&", "||", ";", ";;", "|", "|&", "&", "(", ")"}
REDIRECT = re.compile(r"\d*(<|>|>>|<<|>&|&>|<&)")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(.*)", re.S)


class Invalid(Exception):
    """What a parser said of a command line."""


# ---- finding the commands -------------------------------------------------------------------


def tokens(command: str) -> list[str]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def expand(word: str, variables: dict) -> str:
    return VARIABLE.sub(lambda m: variables.get(m[1] or m[2], PLACEHOLDER), word)


def invocations(commands: list[str]) -> list[tuple[int, list[str]]]:
    """The argv of each command of ours in a block's command lines, in order, each with the
    index of the command line that holds it."""
    variables: dict[str, str] = {}
    found: list[tuple[int, list[str]]] = []
    for i, command in enumerate(commands):
        argvs: list[list[str]] = []
        scan(command, variables, argvs)
        found += [(i, argv) for argv in argvs]
    return found


def scan(command: str, variables: dict, found: list) -> None:
    segment: list[str] = []
    for token in [*tokens(command), ";"]:
        if token in CONTROL:
            simple_command(segment, variables, found)
            segment = []
        else:
            segment.append(token)


PROGRAMS = ("archbench", "pytest", "pytest-benchmark", "make")
ROOT = Path(__file__).resolve().parents[1]


def ours(word: str) -> bool:
    return Path(word).name in (*PROGRAMS, "python", "python3")


def simple_command(words: list[str], variables: dict, found: list) -> None:
    """One command between control operators: assignments, a program and its words."""
    i = 1 if words[:1] == ["export"] else 0
    while i < len(words) and ASSIGNMENT.fullmatch(words[i]):
        i += 1
    if i == len(words):  # assignments alone: the block's variables
        for word in words[1 if words[:1] == ["export"] else 0 :]:
            name, value = ASSIGNMENT.fullmatch(word).groups()
            value = expand(value, variables)
            variables[name] = PLACEHOLDER if "$" in value else value
        return
    if words[i] in WRAPPERS:
        i = next((j for j in range(i + 1, len(words)) if ours(words[j])), i)
    program = Path(words[i]).name
    python_m = program.startswith("python") and words[i + 1 : i + 2] == ["-m"]
    if program in PROGRAMS or (
        python_m and words[i + 2 : i + 3] and words[i + 2].split(".")[0] == "archbench"
    ):
        found.append([program, *arguments(words[i + 1 :], variables)])
        return
    if program.startswith("python"):  # python -c CODE: Python, not a command line
        return
    for word in words[i:]:  # a quoted command: bash -c '...', gcloud ... --command "..."
        if " " in word.strip():
            with contextlib.suppress(ValueError):  # unbalanced quotes: not a command line
                scan(word, variables, found)


def arguments(words: list[str], variables: dict) -> list[str]:
    """The words a program gets: variables expanded (an unquoted `$ARGS` split into words),
    redirections left out."""
    out: list[str] = []
    skip = False
    for word in words:
        if skip or REDIRECT.fullmatch(word):
            skip = not skip
            continue
        m = VARIABLE.fullmatch(word)
        if m and (m[1] or m[2]) in variables:
            out += tokens(variables[m[1] or m[2]])
        else:
            out.append(expand(word, variables))
    return out


# ---- the parsers ----------------------------------------------------------------------------


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` and its subcommands' parsers with abbreviations refused (argparse would take
    `--device-mem` for `--device-memory`) and errors raised as Invalid."""

    def error(message):
        raise Invalid(f"{parser.prog}: {message}")

    parser.allow_abbrev = False
    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict(sub)
    return parser


class _Built(Exception):
    """Raised in place of parsing, to hand back the parser a `main` built."""


def parser_of(main) -> argparse.ArgumentParser:
    """The parser `main(argv)` builds, taken at its parse_args: nothing after it runs."""

    def capture(self, args=None, namespace=None):
        raise _Built(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            main([])
        except _Built as built:
            return built.args[0]
    raise Invalid(f"{main.__module__}.main parsed no arguments")


@functools.cache
def module_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `python -m NAME` (`archbench` and `archbench.cli`: the archbench command)."""
    if name in ("archbench", "archbench.cli"):
        from archbench.cli.main import build_parser

        return strict(build_parser())
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise Invalid(f"python -m {name}: {e}") from None
    if not callable(getattr(module, "main", None)):
        raise Invalid(f"python -m {name}: the module has no main(argv)")
    return strict(parser_of(module.main))


@functools.cache
def pytest_parser():
    """pytest's own parser, with the installed plugins' options and the matrix's
    (bench/matrix/conftest.py, which `pytest bench/` registers)."""
    from _pytest.config import get_config

    from archbench.matrix import conftest

    config = get_config()
    config.pluginmanager.load_setuptools_entrypoints("pytest11")
    config.pluginmanager.register(conftest, "archbench-matrix-conftest")
    return config._parser


def parser_for(argv: list[str]) -> argparse.ArgumentParser:
    if argv[0] == "archbench":
        return module_parser("archbench")
    if argv[0] == "pytest":
        return strict(pytest_parser().optparser)
    if argv[0] == "pytest-benchmark":
        from pytest_benchmark.cli import make_parser

        return strict(make_parser())
    return module_parser(argv[2])


def program_arguments(argv: list[str]) -> list[str]:
    return argv[3:] if argv[0].startswith("python") else argv[1:]


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w.-]+):", text, re.M))


def check_make(argv: list[str]) -> str | None:
    """`make TARGET... [NAME=VALUE]`: each target is one of the Makefile's."""
    for word in argv[1:]:
        if not word.startswith("-") and "=" not in word and word not in make_targets():
            return f"the Makefile has no target {word!r}"
    return None


def check(argv: list[str]) -> str | None:
    """Why the program would refuse this command line, or None: parsed, nothing run."""
    if argv[0] == "make":
        return check_make(argv)
    try:
        parser = parser_for(argv)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            parse = parser.parse_intermixed_args if argv[0] == "pytest" else parser.parse_args
            parse(program_arguments(argv))  # SystemExit: --help, --version
    except Invalid as e:
        return str(e)
    return None


def check_names(argv: list[str]) -> str | None:
    """For inline code: only that its subcommand and its options exist (the rest may be
    placeholders: RECIPE, N, dp|fsdp, [--mode ...])."""
    if argv[0] == "make":
        return check_make(argv)
    try:
        parser = parser_for(argv)
    except Invalid as e:
        return str(e)
    words = [w.strip("[]") for w in program_arguments(argv)]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = {s for a in parser._actions for s in a.option_strings}
    if subs and words and not words[0].startswith("-"):
        if words[0] not in subs[0].choices:
            return f"{parser.prog}: no subcommand {words[0]!r}"
        known |= {s for a in subs[0].choices[words[0]]._actions for s in a.option_strings}
    for word in words:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag != "--" and flag not in known:
            return f"{parser.prog}: no option {flag}"
    return None


# ---- Python ---------------------------------------------------------------------------------


def resolve(dotted: str) -> str | None:
    """Why `archbench.x.y` names nothing, or None: attributes, else submodules, imported."""
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ImportError as e:
        return f"{dotted}: {e}"
    for i, part in enumerate(parts[1:], start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        module = ".".join(parts[: i + 1])
        try:
            obj = importlib.import_module(module)
        except ImportError:
            return f"{dotted}: {'.'.join(parts[:i])} has no {part!r}"
    return None


def attribute_chain(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None when the chain does not start at a name."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id, *reversed(names)] if isinstance(node, ast.Name) else None


def python_problems(source: str, filename: str, first_line: int = 0) -> list[str]:
    """The block compiled (syntax only), and the archbench modules and names it imports, or
    reaches as attributes of an imported archbench module, looked up."""
    try:
        tree = ast.parse("\n" * first_line + source, filename)
    except SyntaxError as e:
        return [f"{filename}:{e.lineno}: {e.msg}"]
    bound: dict[str, str] = {}  # a name in the block -> the archbench module it is
    wanted: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "archbench":
                    wanted.append((node.lineno, alias.name))
                    top = alias.asname or alias.name.split(".")[0]
                    bound[top] = alias.name if alias.asname else "archbench"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "archbench":
            for alias in node.names:
                if alias.name != "*":
                    wanted.append((node.lineno, f"{node.module}.{alias.name}"))
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        chain = attribute_chain(node) if isinstance(node, ast.Attribute) else None
        if chain and chain[0] in bound:
            wanted.append((node.lineno, ".".join([bound[chain[0]], *chain[1:]])))
    problems = []
    for line, dotted in sorted(set(wanted)):
        if (why := resolve(dotted)) is not None:
            problems.append(f"{filename}:{line}: {why}")
    return problems
