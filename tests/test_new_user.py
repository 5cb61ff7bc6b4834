"""Issue 23: what a new user hit, each case as the user ran into it (results files made here)."""

import json
import re
import time
import urllib.parse
from pathlib import Path

import pytest

import archbench
from archbench import archs
from archbench.cli import list_cmd
from archbench.cli.main import main
from archbench.report import document
from tests.test_compare import make_row, write_results


def generate_row(arch, batch, prompt_len=8, gen_len=4, **kw):
    """One generate cell, as `archbench run --mode generate` records it."""
    row = make_row(arch, mode="generate", batch=batch, step_time_s=1e-4 * batch, **kw)
    row["extra_info"].update(
        prompt_len=prompt_len,
        gen_len=gen_len,
        samples_per_s=None,
        prefill_s=2e-4 * batch,
        decode_token_s=1e-4 * batch,
        decode_token_iqr_s=1e-5,
        decode_tokens_per_s=1e4,
        cache_bytes=6144,
        bandwidth_bytes_per_s=1.6e9,
        bandwidth_fraction=0.5,
    )
    return row


def test_report_of_generate_cells_only_at_two_batches(tmp_path):
    """The README's generation example (generate cells only, batch 1,2) crashed the report and
    archbench.plot in the scaling plots (a figure of 0 panels); the generation section draws
    them, the train/infer scaling plots say why they are left out."""
    rows = [generate_row(arch, batch) for arch in ("gpt", "llama", "mamba") for batch in (1, 2)]
    gen = write_results(tmp_path / "gen.json", rows)
    md = tmp_path / "gen.md"
    assert main(["report", gen, "-o", str(tmp_path / "gen.html"), "--md", str(md)]) == 0
    text = md.read_text()
    assert "generation_vs_batch.svg" in text
    figures = archbench.plot(gen)
    assert "generation_vs_batch" in figures and "step_time_vs_batch" not in figures
    with pytest.raises(archbench.UserError, match=r"generate cells.*generation_vs_batch"):
        archbench.plot(gen, "step_time_vs_batch")
    assert re.search(r"Step time vs batch size.*generate cells", text, re.S)


def _shard(path, rows, node="vm", split=None, device_kind="cpu"):
    """A results file of one machine (`node`), its marker recording `split` if given."""
    write_results(path, rows, device_kind)
    doc = json.loads(path.read_text())
    doc["machine_info"]["node"] = node
    if split:
        doc["archbench"]["split"] = split
    path.write_text(json.dumps(doc))
    return str(path)


SHARD_CELLS = [("mlp", "train"), ("mlp", "infer"), ("lenet5", "train"), ("lenet5", "infer")]


@pytest.mark.parametrize(
    "nodes, split",
    [(("vm", "vm"), None), (("node1", "node7"), ("1/2", "2/2"))],
    ids=["same-host", "split-marker"],
)
def test_split_shards_report_as_one_run(tmp_path, nodes, split):
    """`--split 1/2` and `--split 2/2` of one matrix: one run of four cells, not a baseline and
    a second run with no cell in common (and half the rows "not measured")."""
    cells = [make_row(arch, mode=mode) for arch, mode in SHARD_CELLS]
    files = [
        _shard(tmp_path / f"split-{k + 1}.json", cells[k::2], nodes[k], split and split[k])
        for k in range(2)
    ]
    md = tmp_path / "rep.md"
    assert main(["report", *files, "--md", str(md)]) == 0
    text = md.read_text()
    assert "no cell in common" not in text and "not measured" not in text
    assert "Speedup over" not in text and "4 cells" in text
    assert "split-1.json + split-2.json" in text
    runs = document.load_runs(files)
    assert len(runs) == 1 and len(runs[0].rows) == 4


def test_runs_that_are_not_shards_stay_apart(tmp_path):
    """Two runs of the same cells are compared; different hosts without a split, different
    devices, or splits of different N are not one matrix."""
    cells = [make_row(arch, mode=mode) for arch, mode in SHARD_CELLS]
    same = [_shard(tmp_path / f"run-{k}.json", cells) for k in range(2)]
    hosts = [_shard(tmp_path / f"host-{k}.json", cells[k::2], f"node{k}") for k in range(2)]
    kinds = [
        _shard(tmp_path / f"kind-{k}.json", cells[k::2], device_kind=kind)
        for k, kind in enumerate(("cpu", "Fake GPU"))
    ]
    splits = [
        _shard(tmp_path / f"n-{k}.json", cells[k::2], f"node{k}", split)
        for k, split in enumerate(("1/2", "2/3"))
    ]
    for files in (same, hosts, kinds, splits):
        assert len(document.load_runs(files)) == 2, files


def test_list_counts_each_size_once_per_version_of_the_code(tmp_path, monkeypatch, capsys):
    """Plain `archbench list` traced every model of the zoo on every call (20 s and more);
    the built-in families' counts are cached under a key of the model code and the jax and
    flax versions, so a second list traces nothing, and other code counts again."""
    monkeypatch.setenv("ARCHBENCH_CACHE_DIR", str(tmp_path))
    first = list_cmd.list_rows("lenet5")
    assert len(list(tmp_path.glob("param-counts-*.json"))) == 1

    def no_tracing(name, size):
        raise AssertionError(f"{name}/{size} counted again")

    with monkeypatch.context() as m:
        m.setattr(archs, "param_counts", no_tracing)
        assert list_cmd.list_rows("lenet5") == first
        assert main(["list", "lenet5"]) == 0 and "61,706" in capsys.readouterr().out
    counted = []
    real = archs.param_counts
    monkeypatch.setattr(archs, "param_counts", lambda n, s: counted.append(n) or real(n, s))
    monkeypatch.setattr(list_cmd, "code_key", lambda: "other-code")
    assert list_cmd.list_rows("lenet5") == first
    assert counted == ["lenet5"] * len(archs.get("lenet5").sizes)
    (tmp_path / "param-counts-other-code.json").write_text("{not json")  # corrupt: counted
    assert list_cmd.list_rows("lenet5") == first and len(counted) == 6


def test_list_of_the_zoo_is_quick_once_counted(tmp_path, monkeypatch):
    """Every count of the zoo, cached, makes plain `archbench list` a matter of imports."""
    monkeypatch.setenv("ARCHBENCH_CACHE_DIR", str(tmp_path))
    cache = list_cmd.CountCache()
    cache.counts = {f"{n}/{s}": [1, 1] for n, s in archs.cells()}
    cache.added = 1
    cache.save()
    monkeypatch.setattr(archs, "param_counts", lambda n, s: pytest.fail(f"{n}/{s} counted"))
    start = time.perf_counter()
    rows = list_cmd.list_rows()
    assert len(rows) == len(archs.cells()) and time.perf_counter() - start < 3


def test_markdown_plot_links_survive_a_space_in_the_name(tmp_path):
    """`--md "rep ☃.md"` linked its plots as ![..](rep ☃_files/throughput.svg), which Markdown
    does not read as a link; the link is percent-encoded and names the file written."""
    rows = [make_row(arch, batch=b) for arch in ("mlp", "lenet5") for b in (8, 16)]
    md = tmp_path / "rep ☃.md"
    assert main(["report", write_results(tmp_path / "a.json", rows), "--md", str(md)]) == 0
    links = re.findall(r"!\[[^]]*\]\(([^)]*)\)", md.read_text())
    assert links and all(" " not in link for link in links)
    for link in links:
        assert (tmp_path / urllib.parse.unquote(link)).is_file(), link


def test_report_names_archbench_commit_not_the_working_directory(tmp_path):
    """Run outside a git checkout, pytest-benchmark's commit_info says "unversioned"; the card
    and environment give archbench's own commit, which machine_info records."""
    path = Path(write_results(tmp_path / "a.json", [make_row("mlp")]))
    doc = json.loads(path.read_text())
    doc["commit_info"] = {"id": "unversioned", "dirty": False, "branch": "(unknown)"}
    doc["machine_info"]["archbench_commit"] = {"id": "aefe0c7c9a9c2754", "dirty": True}
    doc["machine_info"]["archbench_version"] = "0.1.0"
    path.write_text(json.dumps(doc))
    md = tmp_path / "a.md"
    assert main(["report", str(path), "--md", str(md)]) == 0
    text = md.read_text()
    assert "unversioned" not in text and "(unknown)" not in text
    assert "commit aefe0c7" in text and "| commit | aefe0c7c9a9c (dirty) |" in text
    assert "| archbench | 0.1.0 |" in text


def test_compare_summary_has_no_blank_row_when_new_failed(tmp_path, capsys):
    """A cell that ran in BASE and failed in NEW: the family summary said "all, (empty), 0";
    it says there is no speedup to average, and the cell still regresses."""
    base = write_results(tmp_path / "b.json", [make_row("mlp")])
    new = write_results(tmp_path / "n.json", [make_row("mlp", status="oom")])
    assert main(["compare", base, new, "--threshold", "5"]) == 1
    out = capsys.readouterr().out
    assert not re.search(r"^all\s+0$", out, re.M) and "per family" not in out
    assert "no speedup: none of the 1 cell(s) in common ran in both" in out
    assert "1 cell(s) regressed" in out
    both = [make_row("mlp", status="oom"), make_row("lstm", step_time_s=0.02)]
    new = write_results(tmp_path / "n2.json", both)
    base = write_results(tmp_path / "b2.json", [make_row("mlp"), make_row("lstm")])
    assert main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^all\s+0\.50×\s+1$", out, re.M) and "1 cell(s) that failed" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threshold", "nan"], "--threshold must be a finite percentage >= 0, got nan"),
        (["--threshold", "inf"], "--threshold must be a finite percentage >= 0, got inf"),
        (["--threshold=-1"], "--threshold must be a finite percentage >= 0, got -1"),
    ],
    ids=["nan", "inf", "negative"],
)
def test_compare_threshold_must_be_finite(tmp_path, capsys, argv, message):
    """--threshold nan was taken: "regressed by more than nan%", exit 0 whatever ran."""
    base = write_results(tmp_path / "b.json", [make_row("mlp")])
    new = write_results(tmp_path / "n.json", [make_row("mlp", status="oom")])
    assert main(["compare", base, new, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"archbench: error: {message}"


@pytest.mark.parametrize("seed", ["-5", "99999999999999999999", "4294967296"])
def test_train_seed_out_of_range_is_one_line(capsys, tmp_path, seed):
    """A negative seed or one past 32 bits ended in a numpy traceback (or, from 2**32, was
    silently the same key as another seed); the integer options refuse nan and inf already."""
    out = tmp_path / "never-written"
    assert main(["train", "gru-mnist1d", "--seed", seed, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"archbench: error: --seed must be 0 to 4294967295, got {seed}"
    assert not out.exists()
    for option in ("--epochs", "--seed", "--devices"):
        assert main(["train", "gru-mnist1d", option, "nan"]) == 2
        assert "invalid int value: 'nan'" in capsys.readouterr().err


def test_the_matrix_leaves_no_benchmarks_folder(tmp_path, monkeypatch):
    """`archbench run` left an empty .benchmarks/ in the working directory: pytest-benchmark's
    FileStorage makes its --benchmark-storage folder (default ./.benchmarks) as its session
    starts, though archbench never saves there."""
    import pytest as matrix_pytest  # the matrix runs in-process, as `archbench run` runs it

    from archbench.cli import run_cmd
    from archbench.cli.main import build_parser

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["run", "--arch", "mlp", "--size", "tiny", "--batch", "8"])
    assert matrix_pytest.main([*run_cmd.pytest_args(args, None), "--collect-only"]) == 0
    assert not (tmp_path / ".benchmarks").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_run_target_s_must_be_a_finite_positive_number(capsys, tmp_path, value):
    """--target-s inf passed the check and then overflowed planning the rounds."""
    out = tmp_path / "r.json"
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--target-s", value, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"archbench: error: --target-s {float(value)}: must be a positive number of seconds"
    )
    assert not out.exists()


NAN_PLUGIN = """
import flax.linen as nn
import jax.numpy as jnp

import archbench


class Nany(nn.Module):
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        y = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(
            x.reshape(x.shape[0], -1)
        )
        return y * jnp.nan


archbench.register("nany", Nany, input=archbench.InputSpec("image", (8, 8, 1)),
                   sizes={"tiny": {}, "small": {}})
"""


def test_a_model_that_outputs_nan_is_not_ok(tmp_path, capsys, isolated_registry):
    """Issue 23 item 4: `archbench run --plugin nan.py --arch nany --size tiny` recorded ok."""
    plugin = tmp_path / "nan.py"
    plugin.write_text(NAN_PLUGIN, encoding="utf-8")
    out = tmp_path / "r.json"
    argv = ["run", "--plugin", str(plugin), "--arch", "nany", "--size", "tiny", "--batch", "4"]
    assert main([*argv, "--mode", "train,infer", "--target-s", "0.05", "--out", str(out)]) == 1
    rows = {r["mode"]: r for r in archbench.load(out).to_dict("records")}
    assert rows["train"]["status"] == "nonfinite" and "the loss" in rows["train"]["error"]
    assert rows["infer"]["status"] == "nonfinite" and "the outputs" in rows["infer"]["error"]
    assert "nonfinite" in capsys.readouterr().err


def test_a_long_generation_says_how_far_it_has_got(tmp_path, monkeypatch, capfd):
    """Issue 23 item 6: a generate cell with a long --gen-len showed nothing for minutes. The
    matrix passes run_cell a progress callback: the bar's description on a terminal, and on a
    log a line every PROGRESS_EVERY_S seconds (0 here), which pytest's capture of the running
    cell swallowed until it was written past the capture."""
    from archbench.matrix import session

    monkeypatch.setattr(session, "PROGRESS_EVERY_S", 0)
    argv = ["run", "--arch", "mamba", "--size", "tiny", "--mode", "generate", "--batch", "1"]
    argv += ["--prompt-len", "2", "--gen-len", "3", "--target-s", "0.01"]
    assert main([*argv, "--out", str(tmp_path / "g.json")]) == 0
    err = capfd.readouterr().err
    # the last step of each generation is told
    assert "archbench mamba-tiny-generate-b1-float32-d1-p2-g3: decode 3/3 tokens" in err, err
