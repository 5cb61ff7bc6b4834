"""The small shell that runs the docs' sh/bash blocks for tests/test_docs.py.

A block is a list of commands (backslash continuations joined, comments dropped). Each
`archbench ...` and `python -m MODULE ...` runs in-process (an `archbench` call costs no JAX
import), after bash has expanded its words (quotes, globs, `$VARS`); `export` sets the block's
environment; any other command runs in bash. A block whose environment changes JAX's devices
(XLA_FLAGS, JAX_PLATFORMS) runs the same way in one child process: `python tests/docshell.py
SPEC.json`. A block set up with `bash` runs in bash as a whole, `archbench` a function there.

What a block's HTML comment declares (tests/test_docs.py reads it) arrives here as a `Setup`:
arguments appended to a subcommand's command lines (argparse keeps the last value of an
option, so `--size tiny` after the doc's `--size small` runs it tiny while every option the
doc names is still parsed), textual substitutions of values, the environment and the exit
statuses allowed.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

TRACEBACK = "Traceback (most recent call last)"
DEVICE_VARS = ("XLA_FLAGS", "JAX_PLATFORMS")  # fixed once JAX has started: a child process


@dataclasses.dataclass
class Setup:
    env: dict = dataclasses.field(default_factory=dict)
    append: dict = dataclasses.field(default_factory=dict)  # subcommand -> extra arguments
    default: dict = dataclasses.field(default_factory=dict)  # subcommand -> {option: value}
    subs: list = dataclasses.field(default_factory=list)  # (old, new) on the block's text
    expect: tuple = (0,)
    bash: bool = False
    timeout: float = 300.0


def commands(source: str) -> list[str]:
    """The block's command lines: continuations joined, blank and comment-only lines gone."""
    return [command for _, command in numbered_commands(source)]


def numbered_commands(source: str) -> list[tuple[int, str]]:
    """`commands`, each with the index of the line it starts on."""
    out, current, start = [], "", 0
    for i, line in enumerate(source.splitlines()):
        if not current:
            start = i
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            out.append((start, current.strip()))
        current = ""
    if current.strip():
        out.append((start, current.strip()))
    return out


def words(command: str, cwd: Path, env: dict) -> list[str]:
    """`command`'s words as bash makes them (quotes, globs, variables), comments dropped."""
    script = f"printf '%s\\0' {command}"
    r = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return r.stdout.split("\0")[:-1]


def key(argv: list[str]) -> str:
    """Which declared arguments apply: archbench's subcommand, python -m's module, else the
    program."""
    if argv[0] == "archbench" and len(argv) > 1:
        return argv[1]
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"]:
        return argv[2]
    return Path(argv[0]).name


def options(sub: str) -> set[str]:
    """Every option string `archbench SUB` has, so a doc's flag must be one exactly (argparse
    would otherwise take an abbreviation)."""
    from archbench.cli.main import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.choices and sub in a.choices)
    return {s for a in action.choices[sub]._actions for s in a.option_strings}


def check_flags(argv: list[str]) -> str | None:
    if argv[0] != "archbench" or len(argv) < 2 or argv[1].startswith("-"):
        return None
    known = options(argv[1])
    for w in argv[2:]:
        flag = w.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            return f"archbench {argv[1]} has no option {flag}"
    return None


def extended(argv: list[str], setup: Setup) -> list[str]:
    k = key(argv)
    extra = []
    for opt, value in setup.default.get(k, {}).items():
        if opt not in argv:
            extra += [opt, *value.split()]
    return argv + extra + shlex.split(setup.append.get(k, ""))


def call(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run an archbench command or a `python -m` module in this process: (status, output)."""
    out = io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                if argv[0] == "archbench":
                    from archbench.cli.main import main

                    status = main(argv[1:])
                else:
                    sys.argv = [argv[2], *argv[3:]]
                    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
                    status = 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                import traceback

                traceback.print_exc()
                status = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return status, out.getvalue()


def run_block(source: str, setup: Setup, cwd: Path, env: dict) -> list[dict]:
    """Run every command of the block in order; one record per command."""
    for old, new in setup.subs:
        source = source.replace(old, new)
    env = {**env, **setup.env}
    if setup.bash:
        return [bash_block(source, setup, cwd, env)]
    records = []
    for command in commands(source):
        first = shlex.split(command, comments=True)[:3]
        inproc = first[:1] in (["archbench"], ["export"]) or first[1:2] == ["-m"]
        argv = words(command, cwd, env) if inproc else first
        rec = {"command": command, "argv": argv}
        start = time.monotonic()
        if argv and argv[0] == "export":
            for item in argv[1:]:
                name, _, value = item.partition("=")
                env[name] = value
            rec.update(status=0, output="")
        elif inproc:
            bad = check_flags(argv)
            if bad:
                rec.update(status=None, output=bad)
            else:
                rec["argv"] = argv = extended(argv, setup)
                rec["status"], rec["output"] = call(argv, cwd)
        else:
            extra = shlex.split(setup.append.get(key(argv), ""))
            if extra:  # after the command's words, not after its comment
                command = shlex.join(shlex.split(command, comments=True) + extra)
            r = subprocess.run(
                ["bash", "-c", command],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=setup.timeout,
            )
            rec.update(status=r.returncode, output=r.stdout + r.stderr)
        rec["seconds"] = round(time.monotonic() - start, 2)
        records.append(rec)
        if rec["status"] not in setup.expect:
            break
    return records


def bash_block(source: str, setup: Setup, cwd: Path, env: dict) -> dict:
    """The whole block in bash, `archbench` a function adding the declared arguments."""
    cases = "".join(
        f'    {shlex.quote(sub)}) set -- "$@" {args} ;;\n' for sub, args in setup.append.items()
    )
    prelude = f'archbench() {{\n  case "$1" in\n{cases}  esac\n  "{sys.executable}" -m archbench "$@"\n}}\n'
    r = subprocess.run(
        ["bash", "-ec", prelude + source],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=setup.timeout,
    )
    return {"command": source, "status": r.returncode, "output": r.stdout + r.stderr}


def needs_child(source: str, setup: Setup) -> bool:
    """Does the block set what JAX reads once at start (the devices), so that it needs a
    process of its own?"""
    names = "|".join(DEVICE_VARS)
    return any(v in setup.env for v in DEVICE_VARS) or bool(re.search(rf"\b({names})=", source))


def run_in_child(source: str, setup: Setup, cwd: Path, env: dict) -> list[dict]:
    """`run_block` in a fresh Python whose environment has the block's device variables."""
    child_env = {**env, **setup.env}
    for command in commands(source):  # `export X=..` and `X=.. cmd` both set it for the child
        for m in re.finditer(r"\b([A-Z_]+)=(\S+)", command):
            if m[1] in DEVICE_VARS:
                child_env[m[1]] = m[2]
    spec = cwd / ".docshell.json"
    spec.write_text(json.dumps({"source": source, "setup": dataclasses.asdict(setup)}))
    r = subprocess.run(
        [sys.executable, __file__, str(spec)],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=setup.timeout,
    )
    if r.returncode != 0:
        return [{"command": "(the block's process)", "status": r.returncode, "output": r.stderr}]
    return json.loads((cwd / ".docshell.out.json").read_text())


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    s = spec["setup"]
    s["expect"] = tuple(s["expect"])
    s["subs"] = [tuple(p) for p in s["subs"]]
    here = Path.cwd()
    out = run_block(spec["source"], Setup(**s), here, dict(os.environ))
    (here / ".docshell.out.json").write_text(json.dumps(out))
