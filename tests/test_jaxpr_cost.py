"""The jaxpr's count beside XLA's (archbench.engine.jaxpr_cost): against analytic counts, XLA's
cost analysis, one device against several, and failures recorded as reasons."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import archbench
from archbench.engine import analysis, jaxpr_cost
from archbench.matrix import results
from archbench.report import counts
from tests import xla_flags
from tests.test_old_results import OLD


def xla_flops(fn, *args) -> float:
    return analysis.cost(jax.jit(fn).lower(*args).compile())[0]


def test_a_matmul_is_2mnk_exactly_and_xla_agrees():
    m, k, n = 64, 48, 32
    a, b = jax.ShapeDtypeStruct((m, k), jnp.float32), jax.ShapeDtypeStruct((k, n), jnp.float32)
    got = jaxpr_cost.count(jnp.matmul, a, b)
    assert got.flops == got.matmul_flops == 2 * m * n * k
    assert got.comm_bytes == 0 and got.uncounted == ()
    assert xla_flops(jnp.matmul, a, b) == pytest.approx(got.flops, rel=0.05)


def mlp(widths):
    def forward(params, x):
        for i, w in enumerate(params):
            x = x @ w
            x = jax.nn.relu(x) if i < len(params) - 1 else x
        return x

    return forward


def test_an_mlps_matmuls_are_counted_exactly_and_its_flops_near_xlas():
    batch, widths = 16, (256, 128, 64, 10)
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in itertools.pairwise(widths)]
    x = jax.ShapeDtypeStruct((batch, widths[0]), jnp.float32)
    got = jaxpr_cost.count(mlp(widths), params, x)
    assert got.matmul_flops == sum(2 * batch * i * o for i, o in itertools.pairwise(widths))
    assert got.flops > got.matmul_flops  # the ReLUs
    assert xla_flops(mlp(widths), params, x) == pytest.approx(got.flops, rel=0.05)


def test_a_scans_body_counts_once_per_trip_and_uncounted_work_is_named():
    steps, w = 7, jax.ShapeDtypeStruct((32, 32), jnp.float32)
    h = jax.ShapeDtypeStruct((4, 32), jnp.float32)

    def scanned(w, h):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h, None, length=steps)[0]

    def unrolled(w, h):
        for _ in range(steps):
            h = jnp.tanh(h @ w)
        return h

    once, every = jaxpr_cost.count(scanned, w, h), jaxpr_cost.count(unrolled, w, h)
    assert (once.flops, once.matmul_flops, once.unfused_bytes) == (
        every.flops,
        every.matmul_flops,
        every.unfused_bytes,
    )
    assert once.flops == steps * 2 * 4 * 32 * 32  # the matmuls; jax has no rule for tanh
    assert once.uncounted == ("tanh (1)",) and every.uncounted == (f"tanh ({steps})",)

    def looped(w, h):
        return jax.lax.fori_loop(0, jnp.int32(steps), lambda i, c: c @ w, h)

    assert "while (1)" in jaxpr_cost.count(looped, w, h).uncounted


SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    from archbench.engine import jaxpr_cost
    from archbench.engine.cell import Cell
    from archbench.engine.plan import resolve
    from archbench.engine.program import _state_and_batch, jit_predict
    from archbench.train.steps import jit_train_step

    def traced(arch, mode, devices, sharding):
        plan = resolve(Cell(arch, "tiny", mode, 8, "float32", devices, sharding=sharding))
        args = _state_and_batch(plan, jax.devices()[:devices], abstract=True)
        if mode == "infer":
            args = (args[0], args[1]["x"])
        step = jit_train_step if mode == "train" else jit_predict
        return plan, args, jaxpr_cost.facts(plan, step, args, {})

    out = {}
    for mode in ("train", "infer"):
        for devices in (1, 2):
            plan, args, facts = traced("mlp", mode, devices, "fsdp")
            fn, ins, outs, mesh = jaxpr_cost.per_device_program(plan, args)
            local = jaxpr_cost.count(fn, *args, mesh=mesh, in_specs=ins, out_specs=outs)
            out[f"{mode}{devices}"] = {**facts, "local": local.__dict__}
    out["tp"] = traced("gpt", "train", 2, "tp")[2]
    out["lstm"] = traced("lstm", "train", 2, "dp")[2]
    print(json.dumps(out, default=list))
    """
)


@pytest.fixture(scope="module")
def two_devices():
    env = {**os.environ, "XLA_FLAGS": xla_flags.with_devices(2)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_fsdp_on_two_devices_halves_each_devices_flops_and_sends_bytes(two_devices, mode):
    one, two = two_devices[f"{mode}1"], two_devices[f"{mode}2"]
    assert one["jaxpr_comm_bytes"] == 0 and two["jaxpr_comm_bytes"] > 0
    assert two["jaxpr_flops"] == one["jaxpr_flops"]  # the global step is the same
    # one device's program: its matmuls exactly half of the same program on one device
    assert two["local"]["matmul_flops"] * 2 == one["local"]["matmul_flops"]
    assert two["jaxpr_flops_per_device"] == two["local"]["flops"]
    assert two["local"]["flops"] * 2 == pytest.approx(one["local"]["flops"], rel=1e-3)
    assert two["jaxpr_reason"] is None


def test_strategies_without_a_per_device_program_say_why(two_devices):
    tp, lstm = two_devices["tp"], two_devices["lstm"]
    assert tp["jaxpr_flops"] > 0 and tp["jaxpr_flops_per_device"] is None
    assert "tp splits work inside the layers" in tp["jaxpr_reason"]
    # dp's per-device program of an LSTM fails to trace (its scan's carry): the global count
    # stands, the failure is the reason
    assert lstm["jaxpr_flops"] > 0 and lstm["jaxpr_comm_bytes"] is None
    assert lstm["jaxpr_reason"].startswith("no per-device count: ")


def test_a_failing_count_is_a_reason_in_a_measured_record(monkeypatch):
    def broken(*args, **kwargs):
        raise NotImplementedError("no rule for pallas_call\nsecond line")

    monkeypatch.setattr(jaxpr_cost, "count", broken)
    record = archbench.measure("mlp", "tiny", mode="infer", batch=8, target_s=0.01)
    assert record["status"] == "ok" and record["flops_per_step"] > 0
    assert record["jaxpr_flops"] is None and record["jaxpr_s"] is not None
    assert record["jaxpr_reason"] == "failed: NotImplementedError: no rule for pallas_call"


def test_the_report_section_shows_both_counts_and_skips_old_files():
    assert counts.counts_table(results.flat_rows([OLD])) is None
    row = {**results.flat_rows([OLD])[0], "jaxpr_flops": 2_000_000.0, "jaxpr_reason": "why"}
    row["flops_per_step"] = 3_000_000.0
    table = counts.counts_table([row])
    texts = [c.text for c in table.rows[0]]
    assert "3 M" in texts and "2 M" in texts and "1.50×" in texts and "why" in texts
