"""archbench report -o/--md: the HTML and Markdown report, its plots, bad input, a real browser."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archbench.cli.main import main
from archbench.matrix import results
from archbench.report import plots
from tests.test_compare import make_row, write_results

CHROMIUM = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None
)
# The committed sample: real CPU runs on one device and on eight simulated ones (two runs).
SAMPLES = [
    Path(__file__).parent.parent / "docs" / "sample" / f for f in ("cpu.json", "cpu-x8.json")
]


def base_rows(scale=1.0, oom=True):
    """Two image families at two batch sizes, two sequence families at three lengths."""
    rows = []
    for arch, t in (("mlp", 1e-4), ("lenet5", 3e-4)):
        for mode in ("train", "infer"):
            for batch in (8, 16):
                if oom and arch == "lenet5" and mode == "infer" and batch == 16:
                    rows.append(make_row(arch, mode=mode, batch=batch, status="oom"))
                else:
                    rows.append(
                        make_row(arch, mode=mode, batch=batch, step_time_s=t * batch * scale)
                    )
    for arch, power in (("lstm", 1), ("encoder", 2)):
        for seq_len in (16, 32, 64):
            step = 1e-4 * (seq_len / 16) ** power * scale
            rows.append(make_row(arch, seq_len=seq_len, step_time_s=step))
    return rows


def test_html_and_markdown_report(tmp_path, capsys):
    base = write_results(tmp_path / "cpu.json", base_rows())
    new = write_results(tmp_path / "gpu.json", base_rows(0.5, oom=False), "Fake GPU", "gpu")
    run_dir = tmp_path / "runs" / "mlp-fashion"
    run_dir.mkdir(parents=True)
    lines = [
        {"step": s, "epoch": s // 10, "split": sp, "loss": 1 / (s + 1), "accuracy": 0.8 + s / 1000,
         "lr": 1e-3, "examples_per_s": 1e4, "wall_s": s / 10}
        for s in range(0, 100, 10) for sp in ("train", "test")
    ]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    html_path, md_path = tmp_path / "out" / "report.html", tmp_path / "out" / "report.md"
    argv = ["report", base, new, "-o", str(html_path), "--md", str(md_path)]
    assert main([*argv, "--runs", str(tmp_path / "runs")]) == 0

    html = html_path.read_text()
    for anchor in ("runs", "speedup", "main", "plots", "training", "env", "failed", "all"):
        assert f'<section id="{anchor}">' in html, anchor
    assert '<section id="operations">' not in html  # nothing profiled, nothing said
    assert "<script" not in html and "<link" not in html  # self-contained
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert (
        len(re.findall(r'<img alt="[^"]+" src="data:image/svg\+xml;base64,', html)) == 7
    )  # devices: skipped
    main_table = html.split('<table class="main">')[1].split("</table>")[0]
    for name in ("mlp/tiny", "lenet5/tiny", "lstm/tiny", "encoder/tiny"):
        assert main_table.count(f"<td>{name}</td>") == 2  # one row per run
    assert "oom: RESOURCE_EXHAUSTED" in main_table
    assert "2.00× speedup" in html  # the card of the second run
    assert "Fake GPU" in html and "0.10.2" in html and "0123456789ab" in html
    assert "mlp-fashion" in html and "within" in html  # final test accuracy 0.89 vs 0.87-0.90

    md = md_path.read_text()
    assert "| architecture | params | run | config | train step time |" in md
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(links) == 7 and all(link.startswith("report_files/") for link in links)
    for link in links:
        assert (md_path.parent / link).read_text().startswith("<?xml")
    assert "<details>" in md


def test_training_table_gives_the_data_wait_of_the_whole_run(tmp_path):
    from archbench.report import curves

    def line(kind, split, epoch, **kw):
        return {"kind": kind, "split": split, "epoch": epoch, "step": 10 * epoch, "loss": 1.0,
                "accuracy": 0.9, "wall_s": float(epoch), **kw}  # fmt: skip

    records = [
        line("step", "train", 1, data_wait_s=0.3),  # a window: counted in its epoch line
        line("epoch", "train", 1, data_wait_s=0.3, train_s=1.0),
        line("epoch", "test", 1, data_wait_s=0.0, eval_s=0.5),
        line("epoch", "train", 2, data_wait_s=0.1, train_s=3.0),
        line("epoch", "test", 2, data_wait_s=0.0, eval_s=0.5),
    ]
    run = curves.TrainingRun("toy", tmp_path, records, None)
    assert run.data_wait() == pytest.approx(0.1)  # (0.3 + 0.1) / (1 + 3)
    table = curves.training_table([run])
    assert table.rows[0][table.columns.index("data wait")].text == "10%"
    no_epochs = curves.TrainingRun("old", tmp_path, records[:1], None)  # an older log format
    assert no_epochs.data_wait() is None
    assert curves.training_table([no_epochs]).rows[0][4].text == ""


def test_durations_read_as_plain_numbers():
    from archbench import units

    assert [units.seconds(s) for s in (1034.29, 5.737, 0.0123, 7.89e-4, 1.2e-8, None)] == [
        "1,034 s", "5.74 s", "12.3 ms", "789 µs", "12 ns", "",
    ]  # fmt: skip
    assert units.seconds_spread(1457.2, 12.0) == "1,457 ± 12 s"


def test_scaling_plots_write_growth_exponents():
    rows = [{**r, "run": "cpu"} for r in results_rows(base_rows())]
    fig = plots.scaling_plot(rows, ["cpu"], "seq_len", "step_time_s", "seq", "Step time", (1, 2))
    assert "T^{1.00}" in fig.svg and "T^{2.00}" in fig.svg  # LSTM linear, attention quadratic
    again = plots.scaling_plot(rows, ["cpu"], "seq_len", "step_time_s", "seq", "Step time", (1, 2))
    assert again.svg == fig.svg  # deterministic: no dates, salted ids
    assert plots.growth_exponent([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    skipped = plots.scaling_plot(
        rows, ["cpu"], "devices", "step_time_s", "dev", "Step time vs devices"
    )
    assert isinstance(skipped, plots.Skipped) and "device counts" in skipped.reason


def test_params_plot_gives_a_slope_only_over_three_or_more_architectures():
    params = {"mlp": 1e3, "lenet5": 6e4, "lstm": 3e4, "encoder": 2e5}
    rows = [{**r, "run": "cpu", "params": params[r["arch"]]} for r in results_rows(base_rows())]
    two = [r for r in rows if r["arch"] in ("mlp", "lenet5")]
    assert "Log-log slope" not in plots.step_time_vs_params(two, ["cpu"]).caption
    assert "Log-log slope over all architectures: train" in (
        plots.step_time_vs_params(rows, ["cpu"]).caption
    )


def results_rows(rows):
    return [results.flatten(r, {}, "x.json") for r in rows]


def test_single_run_notes_skipped_plots(tmp_path):
    path = write_results(tmp_path / "one.json", [make_row("mlp"), make_row("mlp", mode="infer")])
    main(["report", path, "--md", str(tmp_path / "r.md"), "-o", str(tmp_path / "r.html")])
    html = (tmp_path / "r.html").read_text()
    assert 'id="speedup"' not in html
    for title in (
        "Step time vs batch size",
        "Step time vs sequence length",
        "Step time vs devices",
    ):
        assert f"{title}: skipped, no architecture was measured at two or more" in html
    assert "*Memory vs batch size: skipped" in (tmp_path / "r.md").read_text()


@pytest.mark.parametrize("content", [None, "", "{not json", '{"archbench": {"schema": 99}}'])
def test_bad_results_file_is_one_line_naming_it(tmp_path, capsys, content):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    good = write_results(tmp_path / "good.json", [make_row("mlp")])
    assert main(["report", good, str(bad), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err, err
    assert not (tmp_path / "r.html").exists()


# ---- a real browser ---------------------------------------------------------------------------

PROBE = """<script>addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const report = {
    images: [...document.images].map(i => [i.naturalWidth, i.naturalHeight, ...box(i)]),
    alts: [...document.images].map(i => i.alt),
    svgs: [...document.querySelectorAll("svg")].map(box),
    rows: [...document.querySelectorAll("table.main tbody tr:not(.famrow)")].map(
      tr => tr.cells[0].textContent),
    roofline: document.querySelectorAll("table.roofline").length,
    main: [document.querySelector("table.main").scrollWidth,
           document.querySelector("table.main").closest(".scroll").clientWidth],
  };
  console.log("archbench-probe " + JSON.stringify(report));
});</script>"""


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (Debian package chromium)"
)
def test_report_in_headless_chromium(tmp_path):
    expected = {(r["source"], r["arch"], r["size"]) for r in results.flat_rows(SAMPLES)}
    html_path = tmp_path / "report.html"
    argv = ["report", *map(str, SAMPLES), "-o", str(html_path), "--roofline", "h100,v5e"]
    assert main(argv) == 0
    probed = tmp_path / "probed.html"
    probed.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))

    proc = chromium(tmp_path, "--window-size=1400,1800", "--dump-dom", probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    probe = [line for line in console if "archbench-probe" in line]
    assert len(probe) == 1 and len(console) == 1, console  # nothing else logged: no errors
    report = json.loads(probe[0].split("archbench-probe ", 1)[1].rsplit('", source:', 1)[0])
    assert len(report["images"]) >= 3
    assert report["roofline"] >= 2  # the bounds on each accelerator, with the roofline plot
    assert any(alt == "Roofline" for alt in report["alts"])
    for natural_w, natural_h, w, h in report["images"]:
        assert min(natural_w, natural_h, w, h) > 0
    assert all(w > 0 and h > 0 for w, h in report["svgs"])
    # One row per architecture, size and run.
    assert sorted(report["rows"]) == sorted(f"{a}/{s}" for _, a, s in expected)
    table_w, room = report["main"]
    assert table_w <= room, f"the main table of two runs is {table_w} px in {room} px"

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--window-size=1400,1800", f"--screenshot={shot}", html_path.as_uri())
    assert proc.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_of_a_fresh_real_run(tmp_path):
    out = tmp_path / "real.json"
    cmd = [sys.executable, "-m", "archbench", "run", "--arch", "mlp", "--size", "tiny",
           "--mode", "infer", "--batch", "8,16", "--target-s", "0.05", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "<td>mlp/tiny</td>" in html and "Step time vs batch size</h3>" in html
