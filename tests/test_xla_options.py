"""Sets of XLA compiler options as a benchmark axis (archbench.engine.xla_options): each set
runs in a process of its own, the user's own XLA_FLAGS win and every record says what was
in force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import archbench
from archbench.cli.main import main
from archbench.engine import xla_options
from archbench.engine.cell import Cell, from_id
from archbench.errors import UserError
from archbench.matrix import results

NO_YNN = xla_options.SETS["cpu-no-ynn"].options["cpu"][0]
NO_YNN_REDUCE = xla_options.SETS["cpu-no-ynn-reduce"].options["cpu"][0]


def test_the_table_names_sets_per_backend():
    assert {"none", "default"} <= set(xla_options.NAMES)
    assert xla_options.SETS["none"].options == {}
    for option_set in xla_options.SETS.values():
        assert xla_options.NAME_PATTERN.fullmatch(option_set.name), option_set.name
        assert option_set.about
        assert set(option_set.options) <= {"cpu", "gpu", "tpu"}
        for flags in option_set.options.values():
            assert flags and all(f.startswith("--xla_") for f in flags), option_set.name


def test_every_option_of_the_table_is_one_xla_knows():
    # XLA aborts a process whose XLA_FLAGS name an unknown option: a typo in the table would
    # kill every worker of its set
    flags = [f for s in xla_options.SETS.values() for f in s.flags(("cpu", "gpu"))]
    code = "import jax; print(jax.numpy.zeros(2).sum())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "XLA_FLAGS": " ".join(flags)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-500:]


def test_the_users_own_options_win_and_follow_the_sets():
    user = "--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_enable_fast_math=false"
    assert xla_options.compose([NO_YNN_REDUCE], user) == user  # the user's value, not the set's
    assert xla_options.compose([NO_YNN_REDUCE], "--xla_cpu_enable_fast_math=false") == (
        f"{NO_YNN_REDUCE} --xla_cpu_enable_fast_math=false"
    )
    assert xla_options.compose([], user) == user
    assert xla_options.compose([NO_YNN_REDUCE], "") == NO_YNN_REDUCE


def test_a_workers_environment_holds_its_set_and_the_users_own():
    parent = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "PATH": "/bin"}
    env = xla_options.worker_environment("cpu-no-ynn-reduce", parent)
    assert env["XLA_FLAGS"] == f"{NO_YNN_REDUCE} --xla_cpu_enable_fast_math=false"
    assert env["ARCHBENCH_USER_XLA_FLAGS"] == parent["XLA_FLAGS"]
    assert env["PATH"] == "/bin" and "LIBTPU_INIT_ARGS" not in env
    assert xla_options.is_in_force("cpu-no-ynn-reduce", env)
    assert not xla_options.is_in_force("none", env)  # the worker of one set runs no other
    assert xla_options.is_in_force("none", parent) and xla_options.is_in_force("default", parent)
    assert not xla_options.is_in_force("cpu-no-ynn-reduce", parent)


def test_a_process_runs_only_the_sets_it_holds(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    with pytest.raises(UserError, match=r"needs XLA_FLAGS=.*-reduce.*--xla-options cpu-no-ynn"):
        archbench.measure("mlp", "tiny", mode="infer", batch=2, xla_options="cpu-no-ynn-reduce")
    with pytest.raises(UserError, match="unknown xla_options 'fast'; valid: none, default"):
        archbench.measure("mlp", "tiny", xla_options="fast")
    # the user already set what the set asks for: this process holds it (checked on the
    # environment alone: validating a cell could start JAX's backend with these flags)
    monkeypatch.setenv("XLA_FLAGS", f"{NO_YNN_REDUCE} --xla_cpu_enable_fast_math=false")
    xla_options.check("cpu-no-ynn-reduce")


def test_a_sets_cell_id_says_it_and_reads_back():
    cell = Cell("gpt", "tiny", "infer", 4, xla_options="cpu-no-ynn-reduce")
    assert cell.id == "gpt-tiny-infer-b4-float32-d1-xcpu_no_ynn_reduce"
    assert from_id(cell.id) == cell
    assert Cell("gpt", "tiny", "infer", 4).id == "gpt-tiny-infer-b4-float32-d1"  # as before


def test_an_unknown_set_is_one_line_naming_the_sets(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run", "--arch", "mlp", "--xla-options", "none,bogus", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "unknown xla_options 'bogus'" in err and ", ".join(xla_options.NAMES) in err
    assert not out.exists()


def test_two_sets_run_in_two_processes_into_one_file(tmp_path, monkeypatch, capsys):
    user = "--xla_cpu_enable_fast_math=false"
    monkeypatch.setenv("XLA_FLAGS", user)
    out, hlo = tmp_path / "r.json", tmp_path / "hlo"
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "2"]
    argv += ["--target-s", "0.01", "--xla-options", "none,cpu-no-ynn", "--dump-hlo", str(hlo)]
    assert main([*argv, "--out", str(out)]) == 0
    rows = {r["xla_options"]: r for r in results.flat_rows([out])}
    assert set(rows) == {"none", "cpu-no-ynn"}
    assert rows["none"]["cell_id"] != rows["cpu-no-ynn"]["cell_id"]
    assert rows["none"]["xla_flags"] == user
    assert rows["cpu-no-ynn"]["xla_flags"] == f"{NO_YNN} {user}"
    assert {r["user_xla_flags"] for r in rows.values()} == {user}
    assert {r["process_cpus"] for r in rows.values()} == {xla_options.cpus()}
    # each process compiled with its own options: YNNPACK's fusions only where it was on
    for name, ynn in (("none", True), ("cpu-no-ynn", False)):
        text = Path(rows[name]["hlo_file"]).read_text()
        assert ("__ynn_fusion" in text) is ynn, name
    info = json.loads(out.read_text())["machine_info"]
    assert info["xla_options"]["cpu-no-ynn"]["XLA_FLAGS"] == f"{NO_YNN} {user}"
    assert info["xla_options"]["none"]["XLA_FLAGS"] == info["environment"]["XLA_FLAGS"] == user
    capsys.readouterr()
    md = tmp_path / "r.md"
    assert main(["report", str(out), "--md", str(md)]) == 0
    section = md.read_text().split("## Xla options", 1)[1]
    assert "| cpu-no-ynn |" in section and "| none |" in section


PINNED = """
import collections, json, os
import jax, jax.numpy as jnp
from archbench.engine import xla_options
x = jnp.ones((64, 64))
jax.jit(lambda a: jnp.tanh(a @ a).sum())(x).block_until_ready()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
pools = collections.Counter(n.rstrip("0123456789") for n in names if n.startswith("tf_XLA"))
print(json.dumps({"pools": pools, "in_force": xla_options.is_in_force("cpu-one-thread"),
                  **xla_options.in_force()}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins CPUs: Linux only")
# pin() runs in the forked child before exec, one system call; this test's process has JAX's
# threads (archbench's own parent of workers does not start JAX), hence Python's warning
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_the_one_thread_set_gives_xla_one_thread_per_pool():
    # XLA sizes its CPU thread pools from the process's affinity; Eigen's single-threaded
    # option alone leaves two threads running on two CPUs, so the set pins its process
    env = xla_options.worker_environment("cpu-one-thread")
    done = subprocess.run(
        [sys.executable, "-c", PINNED], env=env, preexec_fn=xla_options.pin("cpu-one-thread"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["pools"] and set(seen["pools"].values()) == {1}, seen["pools"]
    assert seen["process_cpus"] == 1 and seen["in_force"]
    assert "--xla_cpu_multi_thread_eigen=false" in seen["xla_flags"]
    if xla_options.cpus() > 1:  # this process has more: the set is not in force here
        assert not xla_options.is_in_force("cpu-one-thread")
        with pytest.raises(UserError, match=r"and 1 CPU\(s\) before JAX starts"):
            xla_options.check("cpu-one-thread")
