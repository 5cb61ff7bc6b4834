"""Which trace events time a program's operations (archbench.matrix.op_roofline), on the
layouts a CPU and an accelerator write, and the report section when there is nothing to show.
The profiled cells themselves are tested in test_profile.py (one shared profiled run)."""

from pytest import approx

from archbench.matrix import op_roofline
from archbench.report import operations

HLO = """HloModule jit_step, is_scheduled=true

%fused_dot (p0: f32[8,4], p1: f32[4,2]) -> f32[8,2] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[8,4], b: f32[4,2]) -> f32[8,2] {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[4,2]{1,0} parameter(1)
  %copy.1 = f32[4,2]{1,0} copy(%b)
  ROOT %dot_fusion = f32[8,2]{1,0} fusion(%a, %copy.1), kind=kCustom, calls=%fused_dot
}
"""


def _meta(pid, name, tid=None):
    kind = "process_name" if tid is None else "thread_name"
    return {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}


def _op(pid, tid, op, ts, dur, module="jit_step", **args):
    args = {"hlo_op": op, "hlo_module": module, **args}
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": op, "args": args}


def test_an_accelerator_counts_its_first_devices_xla_ops_line_only():
    events = [
        *(_meta(1, "/device:GPU:1"), _meta(2, "/device:GPU:0"), _meta(3, "/host:CPU")),
        *(_meta(2, "XLA Ops", 7), _meta(2, "Stream #13(compute)", 8)),
        _op(2, 7, "dot_fusion", 0, 10),
        _op(2, 8, "dot_fusion", 1, 4),  # the kernels of that op: counted once, above
        _op(2, 8, "dot_fusion", 6, 4),
        _op(1, 7, "dot_fusion", 0, 99),  # another device
        _op(3, 5, "dot_fusion", 0, 99),  # the host
        _op(2, 7, "fusion.9", 20, 99, module="jit_other"),  # another program
    ]
    picked = op_roofline.op_events({"traceEvents": events}, "jit_step")
    assert [(e["pid"], e["tid"], e["dur"]) for e in picked] == [(2, 7, 10)]


def test_without_an_xla_ops_line_every_kernel_of_the_device_counts():
    events = [_meta(2, "/device:GPU:0"), _op(2, 8, "dot_fusion", 1, 4), _op(2, 9, "copy.1", 6, 2)]
    events.append(_op(2, 9, "copy.1", 9, 2, module="jit_step(7)"))  # a module with its id
    events.append(_op(2, 9, "copy.1", 12, 2, module="jit_step_2"))
    assert len(op_roofline.op_events({"traceEvents": events}, "jit_step")) == 3


def test_a_cpu_counts_the_first_device_ordinal_and_each_run_once():
    events = [_meta(1, "/host:CPU")]
    for run, start in (("r1", 0), ("r2", 100)):
        events += [
            _op(1, 5, "copy.1", start, 2, device_ordinal="0", run_id=run),
            _op(1, 5, "dot_fusion", start + 3, 5, device_ordinal="0", run_id=run),
            _op(1, 6, "dot_fusion", start, 50, device_ordinal="1", run_id=run),
        ]
    events.append({"ph": "X", "pid": 1, "tid": 5, "ts": 0, "dur": 500, "name": "Execute"})
    trace = {"traceEvents": events}
    found = op_roofline.analyse(
        HLO, trace, steps=2, peak_flops=1e9, bandwidth=1e9, step_time_s=20e-6
    )
    assert found["program"] == "jit_step" and found["ops_timed"] == 2
    assert found["ops_time_s"] == approx(7e-6) and found["program_span_s"] == approx(8e-6)
    assert found["product_time_s"] == approx(5e-6)  # the dot's, not the copy's
    dot = next(op for op in found["ops"] if op["name"] == "dot_fusion")
    assert dot["flops"] == 2 * 8 * 2 * 4 and dot["kind"] == "dot fusion"
    assert dot["bytes"] == 4 * (8 * 4 + 4 * 2 + 8 * 2) and dot["time_s"] == approx(5e-6)


def test_a_trace_that_cannot_be_read_is_one_line_and_no_file(tmp_path):
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    record = {"cell_id": "c", "step_time_s": 1e-3, "peak_tflops": 1.0}
    for trace in (tmp_path / "gone.json.gz", tmp_path / "bad.json.gz"):
        found = op_roofline.write(tmp_path, HLO, trace, record, 3)
        assert list(found) == ["op_roofline_error"] and "\n" not in found["op_roofline_error"]
    assert not (tmp_path / op_roofline.FILE_NAME).exists()


def test_no_profile_no_section_and_a_lost_file_is_a_line(tmp_path):
    assert operations.operations_section([{"cell_id": "a", "op_roofline_file": None}]) is None
    gone = str(tmp_path / "op_roofline.json")
    section = operations.operations_section([{"cell_id": "a", "op_roofline_file": gone}])
    assert any("gone or unreadable" in b for b in section.blocks if isinstance(b, str))
