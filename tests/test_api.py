"""The notebook API: archbench.load (results as a DataFrame) and archbench.plot (the report's
plots as matplotlib Figures), on the results of the README's "In a notebook" example, which
runs as written."""

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import archbench
from archbench.cli.main import main
from archbench.matrix import results
from archbench.matrix.results import FLAT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- doc-test: run-by=tests/test_api.py -->"
CELLS = {f"{a}-tiny-{m}-b8-float32-d1" for a in ("mlp", "lenet5") for m in ("train", "infer")}


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """The README's notebook example, run once in a folder of its own: (folder, its stdout)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MARK in text
    block = re.search(r"```python\n(.*?)```", text.split(MARK, 1)[1], re.S)[1]
    folder = tmp_path_factory.mktemp("notebook")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        exec(compile(block, "README.md (In a notebook)", "exec"), {})
    return folder, out.getvalue()


def test_the_readme_notebook_example_runs(readme):
    folder, out = readme
    pivot = out.splitlines()
    assert pivot[0].split() == ["mode", "infer", "train"]
    assert any(line.startswith("lenet5") for line in pivot)
    assert any(line.startswith("mlp") for line in pivot)
    assert {r["cell_id"] for r in results.flat_rows([folder / "quick.json"])} == CELLS
    assert (folder / "throughput.svg").read_text().lstrip().startswith("<?xml")


@pytest.fixture(scope="module")
def two_files(readme):
    """quick.json, and a second file holding one of its cells."""
    folder, _ = readme
    doc = results.load_results(folder / "quick.json")
    doc["benchmarks"] = doc["benchmarks"][:1]
    results.write_atomic(folder / "one.json", results.dump_results(doc))
    return folder / "quick.json", folder / "one.json"


def test_load_is_the_csv_as_a_dataframe(two_files, capsys):
    a, b = two_files
    df = archbench.load(a, str(b))
    assert type(df).__module__.startswith("pandas")
    assert list(df.columns[: len(FLAT_COLUMNS)]) == FLAT_COLUMNS
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--csv", "-"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(df.columns) == list(rows[0])  # the same columns, in the same order
    assert list(df.cell_id) == [r["cell_id"] for r in rows]
    assert list(df.step_time_s) == [float(r["step_time_s"]) for r in rows]
    assert list(df.source) == [str(a)] * 4 + [str(b)]
    assert df.batch.tolist() == [8] * 5
    assert archbench.load([a]).shape[0] == 4  # one list of files works too


def test_load_refuses_a_bad_file_in_one_line(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(archbench.UserError, match=r"x\.json: not an archbench results file"):
        archbench.load(tmp_path / "x.json")
    with pytest.raises(archbench.UserError, match="no such results file"):
        archbench.load(tmp_path / "missing.json")
    with pytest.raises(archbench.UserError, match="one or more"):
        archbench.load()


def test_plot_draws_the_reports_plots(two_files):
    import matplotlib.figure

    a, b = two_files
    figs = archbench.plot([a, b])
    assert {"throughput", "step_time_vs_params"} <= set(figs)
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs.values())
    df = archbench.load(a, b)
    one = archbench.plot(df[df.arch == "lenet5"], "throughput")
    assert isinstance(one, matplotlib.figure.Figure)
    ticks = [t.get_text() for ax in one.axes for t in ax.get_xticklabels()]
    assert "lenet5/tiny" in ticks and "mlp/tiny" not in ticks  # the filtered rows only
    # one batch size cannot draw a batch sweep: the report's own reason
    with pytest.raises(archbench.UserError, match=r"skipped, .*two or more batch sizes"):
        archbench.plot(df, "step_time_vs_batch")
    with pytest.raises(archbench.UserError, match="not a plot; the plots are throughput"):
        archbench.plot(a, "nope")


def test_import_archbench_stays_light():
    code = "import sys, archbench; print('pandas' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
