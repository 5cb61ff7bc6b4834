"""archbench.checks.spread: a cell's blocks in fresh processes, slow blocks and episodes."""

from __future__ import annotations

import json

import pytest

from archbench.checks import spread


# the worker is pinned by a preexec_fn, so forked from this process, where JAX runs
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_a_process_times_its_blocks_with_their_cpu(tmp_path, capsys):
    """In the option set's process: cpu-one-thread pins it to one CPU, one XLA thread."""
    out = tmp_path / "spread.json"
    argv = ["--arch", "mlp", "--size", "tiny", "--batch", "2", "--processes", "1"]
    argv += ["--blocks", "3", "--target-s", "0.01", "--json", str(out)]
    argv += ["--xla-options", "cpu-one-thread"]
    assert spread.main(argv) == 0
    found = json.loads(out.read_text())
    [process] = found["processes"]
    assert len(process["blocks"]) == 3
    assert all(b["ms"] > 0 and b["cpu_per_s"] > 0 for b in process["blocks"])
    assert (process["cpus"], process["xla_threads"]) == (1, 1)  # read from /proc
    assert found["rows"][0]["blocks"] == 3 and "median_ms" in capsys.readouterr().out


def test_slow_blocks_and_their_episodes():
    ms = [10, 10, 13, 14, 10, 10, 15, 10, 10]  # median 10: three slow blocks, two episodes
    blocks = [{"ms": m, "cpu_per_s": 1.5 if m > 12 else 1.9} for m in ms]
    row = spread.summary(0, {"blocks": blocks, "xla_threads": 2, "cpus": 2, "steal_s": 0.0})
    assert (row["slow_blocks"], row["episodes"]) == (3, 2)
    assert row["cpu_per_s_slow"] == "1.50-1.50" and row["cpu_per_s_other"] == "1.90-1.90"
    assert row["slowest/fastest"] == 1.5


def test_bad_input_is_one_line(capsys):
    assert spread.main(["--arch", "mlp", "--blocks", "0"]) == 2
    assert spread.main(["--arch", "nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("spread: error: ") for line in err)
