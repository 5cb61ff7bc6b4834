"""`archbench run --profile DIR --dump-hlo DIR`: one jax.profiler trace and one optimized-HLO
file per cell, their paths in the records, linked from the report; the timed results untouched.
"""

import gzip
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from archbench.cli.main import main
from archbench.engine import hlo_cost, measure
from archbench.engine.outcome import ARTIFACT_KEYS, RESULT_KEYS
from archbench.matrix import artifacts, op_roofline, results

CELLS = ["mlp-tiny-train-b4-float32-d1", "mlp-tiny-infer-b4-float32-d1"]


EVENTS: list[str] = []  # what the profiled run did, in order: rounds, summaries, traces


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """The two mlp cells, profiled and dumped into folders whose names have a space and é."""
    root = tmp_path_factory.mktemp("prof")
    traces, hlo, out = root / "tr aces é", root / "hlo ü", root / "r.json"
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "train,infer", "--batch", "4"]
    argv += ["--target-s", "0.1", "--profile", str(traces), "--dump-hlo", str(hlo)]
    with pytest.MonkeyPatch.context() as mp:
        for owner, name in ((measure.Prepared, "run_round"), (measure, "summarize")):
            mp.setattr(owner, name, _logged(name, getattr(owner, name)))
        mp.setattr(artifacts, "trace", _logged("trace", artifacts.trace))
        assert main([*argv, "--out", str(out)]) == 0
    return traces, hlo, out


def _logged(name, fn):
    def wrapper(*args, **kwargs):
        EVENTS.append(name)
        return fn(*args, **kwargs)

    return wrapper


def _records(out) -> dict:
    return {r["cell_id"]: r for r in results.flat_rows([out])}


def test_one_trace_and_one_hlo_file_per_cell(profiled):
    traces, hlo, out = profiled
    records = _records(out)
    assert set(records) == set(CELLS)
    assert sorted(p.name for p in traces.iterdir()) == sorted(CELLS)
    assert sorted(p.name for p in hlo.iterdir()) == sorted(f"{c}.hlo.txt" for c in CELLS)
    for cell in CELLS:
        r = records[cell]
        assert r["status"] == "ok" and r["step_time_s"] > 0
        assert Path(r["profile_dir"]) == traces / cell
        xplanes = list((traces / cell).glob("plugins/profile/*/*.xplane.pb"))
        assert len(xplanes) == 1 and xplanes[0].stat().st_size > 0
        perfetto = Path(r["perfetto_trace"])
        assert perfetto.parent == xplanes[0].parent
        with gzip.open(perfetto) as f:  # what ui.perfetto.dev opens: Chrome trace JSON
            assert json.load(f)["traceEvents"]
        assert Path(r["hlo_file"]) == hlo / f"{cell}.hlo.txt"
        text = Path(r["hlo_file"]).read_text()
        assert text.startswith("HloModule") and "ENTRY" in text
        assert r["prefill_hlo_file"] is None
    # the train step's program is not the forward pass's
    assert records[CELLS[0]]["hlo_file"] != records[CELLS[1]]["hlo_file"]


def test_the_trace_comes_after_the_timed_rounds_and_the_summary(profiled):
    """The profiler never runs inside a timed round, nor before the record is summarised
    (which reads the memory high-water marks)."""
    cells = "".join({"run_round": "r", "summarize": "s", "trace": "t"}[e] for e in EVENTS)
    assert re.fullmatch(r"(r{5,}st){2}", cells), cells


def test_the_report_links_each_trace_and_hlo_file(profiled, tmp_path):
    traces, _, out = profiled
    html_out, md_out = tmp_path / "report.html", tmp_path / "report.md"
    assert main(["report", str(out), "-o", str(html_out), "--md", str(md_out)]) == 0
    page = html_out.read_text()
    assert '<section id="profiles">' in page and "ui.perfetto.dev" in page
    assert "xprof --logdir" in page and "archbench[profile]" in page
    links = {unquote(urlparse(h).path) for h in _hrefs(page)}
    for r in _records(out).values():
        for key in ("profile_dir", "perfetto_trace", "hlo_file"):
            assert r[key] in links
            assert Path(r[key]).exists()
    assert "## Profiles" in md_out.read_text()
    assert (traces / CELLS[0]).as_uri() in md_out.read_text()  # percent-encoded: space, é
    below = page.split('<section id="operations">')[1].split("</section>")[0]
    for r in _records(out).values():  # each cell's operations, the most time lost first
        top = json.loads(Path(r["op_roofline_file"]).read_text())["ops"][0]
        assert r["cell_id"] in below and f"<td>{top['name']}</td>" in below
    assert "## Operations furthest below their roof" in md_out.read_text()


def _hrefs(page: str) -> list[str]:
    return [part.split('"', 1)[0] for part in page.split('href="file://')[1:]]


def test_each_cell_lists_its_operations_against_their_roofs(profiled):
    """op_roofline.json beside each trace: the operations that lose the most time, every
    one named in the compiled step, their times within the step's, their work the HLO's."""
    _, _, out = profiled
    for r in _records(out).values():
        path = Path(r["op_roofline_file"])
        assert path.parent == Path(r["profile_dir"]) and "op_roofline_error" not in r
        found = json.loads(path.read_text())
        ops, hlo = found["ops"], hlo_cost.operations(Path(r["hlo_file"]).read_text())
        assert ops and len(ops) <= op_roofline.TOP and found["ops_timed"] >= len(ops)
        assert [op["lost_s"] for op in ops] == sorted((op["lost_s"] for op in ops), reverse=True)
        assert found["unmatched_time_s"] == 0 and all(op["name"] in hlo for op in ops)
        # Times: per step, all of them within the step (the step under the profiler may be
        # slower than the timed median: the program's own span in the trace bounds it too)
        assert found["steps"] == artifacts.PROFILE_STEPS
        within = max(r["step_time_s"], found["program_span_s"] or 0)
        assert 0 < sum(op["time_s"] for op in ops) <= found["ops_time_s"] <= within
        # Work: every matrix product of the program was timed, and each bound is its roof
        assert found["product_flops"] == hlo_cost.product_flops(Path(r["hlo_file"]).read_text())
        assert found["product_flops"] > 0
        peak, bandwidth = found["peak_flops_per_s"], found["peak_bandwidth_bytes_per_s"]
        assert peak == pytest.approx(r["peak_tflops"] * 1e12) and bandwidth > 0
        for op in ops:
            assert op["flops"] == hlo[op["name"]].flops * op["calls"]
            roof = max(op["flops"] / peak, op["bytes"] / bandwidth)
            assert op["bound_s"] == pytest.approx(roof)
            assert op["lost_s"] == pytest.approx(op["time_s"] - roof)
            traced_step = found["program_span_s"] or r["step_time_s"]
            assert op["share"] == pytest.approx(op["time_s"] / traced_step)


def test_records_keep_their_keys_in_order(profiled):
    """The artifacts' keys are result keys like any other: in order, None when not asked."""
    _, _, out = profiled
    for row in results.load_results(out)["benchmarks"]:
        info = row["extra_info"]
        assert list(info)[: len(RESULT_KEYS)] == list(RESULT_KEYS)
        assert set(ARTIFACT_KEYS) <= set(info)


def test_generate_cells_dump_prefill_and_decode_and_trace_a_generation(tmp_path):
    argv = ["run", "--arch", "gpt", "--size", "tiny", "--mode", "generate", "--batch", "2"]
    argv += ["--prompt-len", "4", "--gen-len", "2", "--target-s", "0.05"]
    argv += ["--profile", str(tmp_path / "p"), "--dump-hlo", str(tmp_path / "h")]
    assert main([*argv, "--out", str(tmp_path / "g.json")]) == 0
    (r,) = results.flat_rows([tmp_path / "g.json"])
    cell = r["cell_id"]
    assert Path(r["hlo_file"]).name == f"{cell}.decode.hlo.txt"
    assert Path(r["prefill_hlo_file"]).name == f"{cell}.prefill.hlo.txt"
    assert Path(r["hlo_file"]).read_text() != Path(r["prefill_hlo_file"]).read_text()
    assert list(Path(r["profile_dir"]).glob("plugins/profile/*/*.xplane.pb"))
    assert r["op_roofline_file"] is None  # two programs in one trace: not analysed


def test_compile_only_dumps_hlo_and_refuses_profile(tmp_path, capsys):
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "4"]
    argv += ["--compile-only", "--out", str(tmp_path / "c.json")]
    assert main([*argv, "--dump-hlo", str(tmp_path / "h")]) == 0
    (r,) = results.flat_rows([tmp_path / "c.json"])
    assert r["status"] == "compiled"
    assert Path(r["hlo_file"]).read_text().startswith("HloModule")
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--profile", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--profile" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_a_file_in_the_way_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "4"]
    assert main([*argv, "--dump-hlo", str(tmp_path / "f"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dump-hlo" in err
    assert not (tmp_path / "x").exists()
