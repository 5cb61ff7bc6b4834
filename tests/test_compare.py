"""archbench compare: speedups, per-family geometric means, the regression threshold."""

import math

import pytest

from archbench.cli.main import main
from archbench.matrix import results
from archbench.report import compare

FAMILIES = {"mlp": "MLP", "lenet5": "LeNet-5", "lstm": "LSTM", "encoder": "Transformer encoder"}


def make_row(arch, size="tiny", mode="train", batch=8, step_time_s=0.01, iqr=0.0, **kw) -> dict:
    """One benchmarks[] entry of a results file, as the matrix writes it."""
    cell = {
        "arch": arch,
        "size": size,
        "mode": mode,
        "batch": batch,
        "dtype": kw.pop("dtype", "float32"),
        "devices": kw.pop("devices", 1),
        "seq_len": kw.pop("seq_len", None),
    }
    status = kw.pop("status", "ok")
    flops = kw.pop("flops_per_step", 1e6 * batch)
    info = {**cell, "status": status, "family": FAMILIES.get(arch, arch), "params": 1000}
    if status == "ok":
        info.update(
            step_time_s=step_time_s,
            step_time_iqr_s=iqr,
            samples_per_s=batch / step_time_s,
            tokens_per_s=batch * cell["seq_len"] / step_time_s if cell["seq_len"] else None,
            flops_per_step=flops,
            tflops_per_s=flops / step_time_s / 1e12,
            mfu=None,
            lower_s=0.01,
            compile_s=0.2,
            compiled_bytes=1e5 * batch,
            peak_bytes=None,
        )
    else:
        info["error"] = kw.pop("error", "RESOURCE_EXHAUSTED: out of memory")
    info.update(kw)
    stats = {"median": step_time_s, "iqr": iqr, "rounds": 5} if status == "ok" else None
    cell_id = "-".join(str(v) for v in cell.values() if v is not None)
    return {
        "name": f"test_cell[{cell_id}]",
        "param": cell_id,
        "params": cell,
        "extra_info": info,
        "stats": stats,
    }


def write_results(path, rows, device_kind="cpu", backend="cpu", device_count=1) -> str:
    """A results file of `rows` (from make_row), as `archbench run` writes it."""
    doc = {
        "machine_info": {
            "backend": backend,
            "device_kind": device_kind,
            "device_count": device_count,
            "jax": "0.10.2",
            "jaxlib": "0.10.2",
            "flax": "0.12.8",
            "optax": "0.2.8",
            "python_version": "3.11.2",
            "cpu": {"brand_raw": "Test CPU @ 2.0GHz"},
        },
        "commit_info": {"id": "0123456789abcdef", "dirty": False, "branch": "main"},
        "benchmarks": rows,
        "datetime": "2026-11-23T10:00:00+00:00",
        "version": "5.3.1",
        results.MARKER: results.marker(),
    }
    results.write_atomic(path, results.dump_results(doc))
    return str(path)


def flat(rows):
    return [results.flatten(r, {}, "x.json") for r in rows]


def test_speedup_throughput_and_family_geomean():
    base = flat(
        [
            make_row("mlp", step_time_s=2.0),
            make_row("mlp", batch=16, step_time_s=1.0),
            make_row("lenet5", step_time_s=1.0),
            make_row("lstm", step_time_s=1.0),
        ]
    )
    new = flat(
        [
            make_row("mlp", step_time_s=1.0),
            make_row("mlp", batch=16, step_time_s=0.125),
            make_row("lenet5", step_time_s=2.0),
            make_row("encoder", step_time_s=1.0),
        ]
    )
    cmp = compare.compare_rows(base, new)
    assert [p.key[0] for p in cmp.pairs] == ["mlp", "mlp", "lenet5"]
    assert cmp.pairs[0].speedup == pytest.approx(2.0)
    assert cmp.pairs[0].throughput_ratio == pytest.approx(2.0)
    assert cmp.pairs[2].speedup == pytest.approx(0.5)
    means = compare.family_geomeans(cmp.pairs)
    assert means["MLP"] == (pytest.approx(4.0), 2)  # sqrt(2 * 8)
    assert means["LeNet-5"] == (pytest.approx(0.5), 1)
    assert means["all"][0] == pytest.approx(math.prod([2, 8, 0.5]) ** (1 / 3))
    assert (cmp.only_base, cmp.only_new) == (1, 1)


def test_threshold_ignores_noise_and_catches_regressions():
    base = flat(
        [
            make_row("mlp", step_time_s=1.0, iqr=0.1),
            make_row("lenet5", step_time_s=1.0, iqr=0.01),
            make_row("lstm", step_time_s=1.0, iqr=0.01),
        ]
    )
    new = flat(
        [
            make_row("mlp", step_time_s=1.15, iqr=0.1),  # 15% slower, but within the spread 0.2
            make_row("lenet5", step_time_s=1.15, iqr=0.01),  # 15% slower, beyond the spread 0.02
            make_row("lstm", step_time_s=1.05, iqr=0.0),  # beyond the spread, below the threshold
        ]
    )
    cmp = compare.compare_rows(base, new)
    assert [p.key[0] for p in compare.regressions(cmp.pairs, 10)] == ["lenet5"]
    assert compare.regressions(cmp.pairs, 20) == []
    text = compare.format_comparison(cmp, 10)
    assert "1 cell(s) regressed" in text and "lenet5/tiny train" in text


def test_newly_failing_cell_regresses():
    base = flat([make_row("mlp")])
    new = flat([make_row("mlp", status="oom")])
    (pair,) = compare.compare_rows(base, new).pairs
    assert pair.speedup is None and pair.regressed(50)
    assert "NEW oom" in pair.status_note()


def test_cli_compare_exit_status(tmp_path, capsys):
    base = write_results(
        tmp_path / "base.json",
        [make_row("mlp", step_time_s=2.0), make_row("lenet5", step_time_s=1.0)],
    )
    fast = write_results(
        tmp_path / "fast.json",
        [make_row("mlp", step_time_s=1.0), make_row("lenet5", step_time_s=1.0)],
    )
    slow = write_results(tmp_path / "slow.json", [make_row("mlp", step_time_s=3.0)])
    assert main(["compare", base, fast, "--threshold", "5"]) == 0
    out = capsys.readouterr().out
    assert "2.00×" in out and "no cell regressed" in out
    assert main(["compare", base, slow, "--threshold", "5"]) == 1
    assert "mlp/tiny train b=8 float32 ×1" in capsys.readouterr().out.split("regressed by")[1]
    assert main(["compare", base, slow]) == 0  # without a threshold: report only


def test_cli_compare_bad_input(tmp_path, capsys):
    a = write_results(tmp_path / "a.json", [make_row("mlp")])
    b = write_results(tmp_path / "b.json", [make_row("lenet5")])
    empty = tmp_path / "empty.json"
    empty.write_text("")
    for argv, needle in [
        (["compare", a, b], "no cell in common"),
        (["compare", a, str(empty)], "empty.json"),
        (["compare", a, str(tmp_path / "missing.json")], "missing.json"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
