"""The docs are tests: every sh, bash, console and Python block of README.md and docs/*.md runs
here, through Sybil (its Markdown lexers, its `skip` comments, the document's namespace).

What a block needs is declared next to it in the doc, in an HTML comment Sybil reads:

    <!-- doc-test: run+="--size tiny --target-s 0.01" env=XLA_FLAGS=... sub="small=>tiny" -->

- `SUB+="ARGS"`: ARGS appended to every `archbench SUB` (or `python -m SUB`, or program SUB)
  command of the block: argparse keeps an option's last value, so the doc's command runs with
  a smaller value while every option it names is still parsed, and must be one of archbench's
  exactly (tests/docshell.py: a renamed or abbreviated option fails the test);
- `SUB?="--opt VALUE"`: --opt VALUE appended only where the command lacks --opt;
- `sub="OLD=>NEW"`: a textual substitution of a value (never of an option: no `--`);
- `env=NAME=VALUE`: the block's environment (simulated devices: a process of its own);
- `expect=0,1`: the exit statuses allowed (default 0); `bash`: the block runs in bash whole;
- `file=NAME` (Python): the block is a file: saved as NAME and loaded as a plugin;
- `run-by=tests/FILE.py`: that test file runs the block (it must name this comment).

A block that cannot run here is marked with Sybil's `<!-- skip: next "why" -->`, right after
a note the reader sees (`*Not run by the tests: ...*`). Every block runs in one folder per
doc, a copy of one shared tiny `archbench run` (`world`): the results files the docs name.

Running them takes minutes (`make docs-test`, the `docs` mark). The default run has guards
that run nothing and take about a second: every block says its language, every skipped block
says so visibly, and every command of every block (skipped ones too), every Python block and
every command or dotted archbench name in inline code is checked against the real parsers and
modules (tests/doccommands.py): a renamed option, subcommand, make target or Python name in a
doc fails `make test`.
"""

import os
import re
import shlex
import shutil
import socket
import sys
import unittest
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

from tests import doccommands, docshell

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
RESULT_NAMES = ["cpu.json", "h100.json", "main.json", "branch.json", "a.json", "b.json"]
RESULT_NAMES += ["r.json", "gpu.json"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BIN = str(Path(sys.executable).parent)
PLACES = {"bin": BIN, "root": str(ROOT), "port": free_port()}


def parse_setup(arguments: str) -> dict:
    """The `doc-test:` comment's declarations (a bad one fails when the docs are parsed)."""
    setup, extra = docshell.Setup(), {}
    for token in shlex.split(arguments):
        token = token.format(**PLACES)
        if m := re.fullmatch(r"([\w.-]+)\+=(.*)", token, re.S):
            setup.append[m[1]] = m[2]
        elif m := re.fullmatch(r"([\w.-]+)\?=(--[\w-]+) (.*)", token, re.S):
            setup.default.setdefault(m[1], {})[m[2]] = m[3]
        elif token.startswith("sub="):
            old, new = token[4:].split("=>")
            assert "--" not in old + new, f"a substitution changes values, not options: {token}"
            setup.subs.append((old, new))
        elif token.startswith("env="):
            name, value = token[4:].split("=", 1)
            setup.env[name] = value
        elif token.startswith("expect="):
            setup.expect = tuple(int(s) for s in token[7:].split(","))
        elif token.startswith("timeout="):
            setup.timeout = float(token[8:])
        elif token == "bash":
            setup.bash = True
        elif token.split("=")[0] in ("file", "run-by"):
            extra[token.split("=")[0]] = token.split("=", 1)[1]
        else:
            raise ValueError(f"unknown doc-test declaration {token!r}")
    return {"setup": setup, **extra}


class SetupParser:
    """`<!-- doc-test: ... -->`: what the next block needs."""

    def __init__(self):
        self.lexer = DirectiveInHTMLCommentLexer(directive="doc-test")

    def __call__(self, document):
        for region in self.lexer(document):
            text = region.lexemes["arguments"] + " " + str(region.lexemes.get("source") or "")
            region.parsed = parse_setup(text)
            region.evaluator = self.evaluate
            yield region

    @staticmethod
    def evaluate(example):
        example.namespace["next"] = example.parsed


def declared(example) -> dict:
    return example.namespace.pop("next", None) or {"setup": docshell.Setup()}


def run_by(decl: dict, example) -> bool:
    """A block another test file runs: that file must name the comment that says so."""
    if "run-by" not in decl:
        return False
    test_file = ROOT / decl["run-by"]
    assert f"doc-test: run-by={decl['run-by']}" in test_file.read_text(encoding="utf-8"), (
        f"{example.path}:{example.line}: {decl['run-by']} does not name this block"
    )
    return True


def shell(example, source=None):
    decl = declared(example)
    if run_by(decl, example):
        return
    setup, ns = decl["setup"], example.namespace
    source = example.parsed if source is None else source
    cwd, env = ns["cwd"], ns["env"]
    if docshell.needs_child(source, setup) and not setup.bash:
        records = docshell.run_in_child(source, setup, cwd, env)
    else:
        records = docshell.run_block(source, setup, cwd, env)
    for rec in records:
        if os.environ.get("ARCHBENCH_DOC_TIMES"):
            with open(os.environ["ARCHBENCH_DOC_TIMES"], "a") as f:
                f.write(f"{rec.get('seconds')}\t{example.line}\t{rec['command'][:150]}\n")
        where = f"{Path(example.path).name}:{example.line}: {rec['command']}"
        assert docshell.TRACEBACK not in rec["output"], f"{where}\n{rec['output']}"
        assert rec["status"] in setup.expect, (
            f"{where}\nexit status {rec['status']}, not {setup.expect}\n{rec['output'][-3000:]}"
        )


def console(example):
    """A transcript: the `$ ` lines are the commands (the output shown is not compared)."""
    lines = [line[2:] for line in example.parsed.splitlines() if line.startswith("$ ")]
    shell(example, "\n".join(lines))


def python(example):
    decl = declared(example)
    if run_by(decl, example):
        return
    source = example.parsed
    for old, new in decl["setup"].subs:
        source = source.replace(old, new)
    if "file" in decl:  # a file the doc asks the reader to save: saved, and loaded as --plugin
        from archbench.archs import plugins

        path = example.namespace["cwd"] / decl["file"]
        path.write_text(source, encoding="utf-8")
        plugins.load_file(str(path))
        return
    code = compile("\n" * example.line + source, example.path, "exec")
    exec(code, example.namespace)


SYBIL = Sybil(
    parsers=[
        SetupParser(),
        SkipParser(),
        CodeBlockParser("python", python),
        CodeBlockParser("sh", shell),
        CodeBlockParser("bash", shell),
        CodeBlockParser("console", console),
    ],
    path=str(ROOT),
)
DOCUMENTS = {doc: SYBIL.parse(ROOT / doc) for doc in DOCS}


def is_comment(example) -> bool:
    """A `doc-test:` or `skip:` comment, which acts on the block after it."""
    return isinstance(example.region.evaluator, Skipper) or isinstance(example.parsed, dict)


BLOCKS = [
    pytest.param(doc, i, id=f"{doc}:{ex.line}")
    for doc, document in DOCUMENTS.items()
    for i, ex in enumerate(document)
    if not is_comment(ex)
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny `archbench run` (one cell: the docs' commands run at tiny sizes too), under
    every name the docs give a results file (runs/ is made by the docs' `archbench train`)."""
    from archbench.cli.main import main

    folder = tmp_path_factory.mktemp("docs-world")
    out = folder / "results" / "main-job.json"
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "train", "--batch", "8"]
    argv += ["--target-s", "0.01", "--out", str(out)]
    assert main(argv) == 0
    for name in RESULT_NAMES:
        shutil.copy(out, folder / name)
    return folder


@pytest.fixture(scope="module")
def registry():
    """The registry, plugins and all, as it was before a doc registered anything."""
    from archbench.archs import plugins
    from archbench.archs import registry as reg

    saved = dict(reg._REGISTRY), dict(plugins._loaded), dict(plugins.ORIGIN)

    def restore():
        for now, was in zip((reg._REGISTRY, plugins._loaded, plugins.ORIGIN), saved, strict=True):
            now.clear()
            now.update(was)

    yield restore
    restore()


STARTED: dict = {}  # doc -> its folder, once its first block has run


# Running every block takes minutes of compiling (about 3 on two cores): `make docs-test` runs
# them; the default run (`make test`, .ci/run) leaves them out to keep within its time.
@pytest.mark.docs
@pytest.mark.parametrize(("doc", "index"), BLOCKS)
def test_doc_block(doc, index, world, registry, tmp_path_factory, monkeypatch):
    document = DOCUMENTS[doc]
    examples = list(document)
    if doc not in STARTED:  # a fresh copy of the world and namespace, and the registry as it was
        registry()
        cwd = tmp_path_factory.mktemp(Path(doc).stem)
        shutil.copytree(world, cwd, dirs_exist_ok=True)
        STARTED[doc] = cwd
        env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
        document.namespace.update(cwd=cwd, env=env, next=None)
    monkeypatch.chdir(STARTED[doc])
    # the comments before this block (its setup, a skip) take effect first, in order
    j = index - 1
    while j >= 0 and is_comment(examples[j]):
        j -= 1
    for ex in examples[j + 1 : index]:
        ex.evaluate()
    try:
        examples[index].evaluate()
    except unittest.SkipTest as e:
        pytest.skip(str(e))


FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_block_is_a_test(doc):
    """A block of commands or Python must say its language (sh, bash, console, python), so
    that Sybil runs it: none hides as a plain block."""
    for m in FENCE.finditer((ROOT / doc).read_text(encoding="utf-8")):
        if m[1]:
            continue
        lines = [line.strip() for line in m[2].splitlines()]
        commands = [x for x in lines if re.match(r"(\$ |archbench |python |make |import )", x)]
        assert not commands, f"{doc}: a plain block holds commands: {commands[0]}"


@pytest.mark.parametrize("doc", DOCS)
def test_blocks_not_run_say_so_visibly(doc):
    """Each `skip` comment follows a note the reader sees: "Not run by the tests"."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    for m in re.finditer(r"<!-- skip: next (.*?) -->", text):
        before = text[: m.start()].rstrip().rsplit("\n\n", 1)[-1]
        assert "not run by the tests" in before.lower(), f"{doc}: no visible note before {m[0]}"


# ---- the guards of the default run: every command parsed, every Python block compiled -------


def example_commands(example) -> list[tuple[int, str]] | None:
    """The command lines of a shell or console block, each with its line in the doc; None for
    any other example."""
    if example.region.evaluator is shell:
        numbered = docshell.numbered_commands(example.parsed)
    elif example.region.evaluator is console:
        lines = enumerate(example.parsed.splitlines())
        numbered = [(i, line[2:]) for i, line in lines if line.startswith("$ ")]
    else:
        return None
    return [(example.line + 1 + i, command) for i, command in numbered]


INLINE_COMMAND = re.compile(
    r"(archbench|pytest|pytest-benchmark|make|python3? -m archbench[\w.]*) "
)
DOTTED = re.compile(r"archbench(\.\w+)+")


def prose(text: str) -> str:
    """`text` with its fenced blocks and HTML comments blanked, lines kept where they were."""
    blank = lambda m: re.sub(r"[^\n]", " ", m[0])  # noqa: E731
    return re.sub(r"<!--.*?-->", blank, FENCE.sub(blank, text), flags=re.S)


def inline_problems(text: str, doc: str) -> list[str]:
    """Inline code naming a command (its subcommand and options checked) or a dotted
    archbench name (looked up)."""
    text, problems = prose(text), []
    for m in re.finditer(r"`([^`]+)`", text):
        code, where = " ".join(m[1].split()), f"{doc}:{text.count(chr(10), 0, m.start()) + 1}"
        if INLINE_COMMAND.match(code + " ") and code not in ("archbench", "make"):
            for _, argv in doccommands.invocations([code]):
                if why := doccommands.check_names(argv):
                    problems.append(f"{where}: `{code}`: {why}")
        elif (name := DOTTED.match(code)) and (why := doccommands.resolve(name[0])):
            problems.append(f"{where}: `{code}`: {why}")
    return problems


def doc_problems(document, doc: str) -> list[str]:
    """What in `document` names a command, option or Python name that does not exist."""
    problems = []
    for example in document:
        if is_comment(example):
            continue
        numbered = example_commands(example)
        if numbered is not None:
            for i, argv in doccommands.invocations([command for _, command in numbered]):
                if why := doccommands.check(argv):
                    problems.append(f"{doc}:{numbered[i][0]}: {shlex.join(argv)}: {why}")
        elif example.region.evaluator is python:
            problems += doccommands.python_problems(str(example.parsed), doc, example.line)
    return problems + inline_problems(document.text, doc)


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_and_name_exists(doc):
    """Every command of every block (skipped ones too) parses with its program's parser, every
    Python block compiles and imports what exists, and so does the inline code: nothing runs."""
    problems = doc_problems(DOCUMENTS[doc], doc)
    assert not problems, "\n".join(problems)


# A doc as it could go wrong: (doc, the text as it is, the text renamed, what the guard says).
RENAMED = [
    ("README.md", "--device-memory 80GiB", "--device-mem 80GiB", "--device-mem"),  # an abbrev.
    ("README.md", "--threshold 5", "--thresh 5", "--thresh"),
    ("README.md", "archbench compare cpu.json", "archbench diff cpu.json", "'diff'"),
    ("README.md", "--size small --batch 32 --rounds", "--size small --batch 32 --round", "--round"),
    ("README.md", "`archbench train --list`", "`archbench train --lst`", "--lst"),
    ("README.md", "`make docs-test`", "`make doc-test`", "doc-test"),
    ("README.md", "archbench.param_count(", "archbench.param_counts(", "param_counts"),
    ("README.md", "archbench.train.recipes.RECIPES", "archbench.train.recipes.RECIPE", "RECIPE"),
    ("docs/design.md", "archbench.active_param_count(", "archbench.active_params(", "active_"),
    ("docs/multihost.md", "--num-processes $SLURM_NTASKS", "--nprocs $SLURM_NTASKS", "--nprocs"),
    ("docs/multihost.md", "--distributed-timeout 600", "--distributed-timeout-s 600", "-s"),
    ("docs/performance.md", "--variants default,ragged", "--variant default,ragged", "--variant"),
]


@pytest.mark.parametrize(("doc", "old", "new", "said"), RENAMED, ids=[r[2] for r in RENAMED])
def test_a_renamed_flag_command_or_name_in_a_doc_fails_the_guard(doc, old, new, said, tmp_path):
    """The guard on each doc, fed the doc with one name changed (in a block the tests skip, in
    a quoted command, in inline code, in Python): exactly that line is a problem."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert old in text, f"{doc} no longer holds {old!r}: update this test"
    path = tmp_path / Path(doc).name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    problems = doc_problems(SYBIL.parse(path), doc)
    lines = text[: text.index(old)].split("\n")
    while len(lines) > 1 and lines[-2].endswith("\\"):  # a command's first line names it
        lines.pop()
    line = len(lines)
    assert len(problems) == 1 and said in problems[0], problems
    assert problems[0].startswith(f"{doc}:{line}: "), problems
