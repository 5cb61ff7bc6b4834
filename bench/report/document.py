"""The HTML and Markdown report of one or more results files (it never re-runs a model).

The HTML file is self-contained (CSS inline, plots as SVG data URIs, no script or font), so it
opens offline; the Markdown file has the same tables, with the plots as SVG files in
<md-stem>_files/ beside it, for a README or a pull request.

Comparison first: one card per run with its speedup over the first; the speedup per family
and per architecture; the main table, one row per architecture and size, train and infer side
by side; the plots; sharding strategies; generation (prefill, then decoding token by token);
the roofline (which roof binds each cell, its efficiency, its bounds on other accelerators);
rematerialisation (train cells with --remat against none);
training curves; links to profiler traces and HLO files; each run's environment; failed cells; and, folded, every flat row with every
number.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from archbench import units
from archbench.matrix import results
from archbench.report import compare, shards


@dataclass
class Run:
    """One run: a short label, its environment, its flat rows (with `run` labels). A run is
    one results file, or the shards of one matrix (archbench.report.shards): `path` is the
    first file, `paths` every one."""

    label: str
    path: str
    env: dict[str, str]
    rows: list[dict]
    color: str = "#3b6fb6"
    paths: list[str] = field(default_factory=list)

    @property
    def names(self) -> str:
        """The file names of the run: 'cpu.json', or 'split-1.json + split-2.json'."""
        return " + ".join(Path(p).name for p in self.paths or [self.path])


def _version(mi: dict, name: str) -> str:
    for d in (mi, mi.get("versions"), mi.get("packages")):
        for key in (name, f"{name}_version"):
            if isinstance(d, dict) and d.get(key):
                return str(d[key])
    return ""


def environment(doc: dict, path: str) -> dict[str, str]:
    """Where and with what a results file was measured, as display strings (empty ones left out)."""
    mi = doc.get("machine_info") or {}
    ci = doc.get("commit_info") or {}
    cpu = mi.get("cpu")
    if isinstance(cpu, dict):
        cpu = cpu.get("brand_raw") or cpu.get("brand") or cpu.get("arch_string_raw")
    # archbench's own checkout (machine_info), else pytest-benchmark's commit_info, which
    # describes the working directory: "unversioned" outside a git checkout
    ours = mi.get("archbench_commit") if isinstance(mi.get("archbench_commit"), dict) else {}
    source = ours if ours.get("id") else ci
    commit = str(source.get("id") or "").replace("unversioned", "")[:12]
    if commit and source.get("dirty"):
        commit += " (dirty)"
    if commit and ci.get("branch") and ci.get("id") == source.get("id"):
        commit += f" on {ci['branch']}"
    env = {
        "file": str(path),
        "backend": mi.get("backend"),
        "device kind": mi.get("device_kind"),
        "devices": mi.get("device_count"),
        **{name: _version(mi, name) for name in ("jax", "jaxlib", "flax", "optax")},
        "python": mi.get("python_version"),
        "cpu": cpu or mi.get("processor"),
        "host": " ".join(str(mi.get(k) or "") for k in ("system", "release", "machine")).strip(),
        "date": str(doc.get("datetime") or "")[:19].replace("T", " "),
        "archbench": mi.get("archbench_version"),
        "commit": commit,
    }
    return {k: str(v) for k, v in env.items() if v not in (None, "")}


def _label(env: dict) -> str:
    kind = env.get("device kind") or env.get("backend") or "run"
    n = env.get("devices", "1")
    return kind if n == "1" else f"{kind} ×{n}"


def load_runs(paths) -> list[Run]:
    """Read each results file (a bad one: UserError naming it) and give its run a unique label."""
    from archbench.report.plots import RUN_COLORS

    docs = [results.load_results(path) for path in paths]
    rows = [results.flat_rows([path]) for path in paths]
    runs = []
    for members in shards.group(docs, rows):  # the shards of one matrix are one run
        envs = [environment(docs[i], str(paths[i])) for i in members]
        env = {k: ", ".join(dict.fromkeys(e[k] for e in envs if k in e)) for k in envs[0]}
        if len(members) > 1:
            env["shards"] = f"{len(members)} files, one matrix"
        cells = [r for i in members for r in rows[i]]
        files = [str(paths[i]) for i in members]
        runs.append(Run(_label(envs[0]), files[0], env, cells, paths=files))
    for suffix in (lambda i, run: Path(run.path).stem, lambda i, run: f"#{i + 1}"):
        counts = Counter(run.label for run in runs)
        for i, run in enumerate(runs):
            if counts[run.label] > 1:
                run.label = f"{run.label} · {suffix(i, run)}"
    for i, run in enumerate(runs):
        run.color = RUN_COLORS[i % len(RUN_COLORS)]
        run.rows = [{**r, "run": run.label, "run_index": i} for r in run.rows]
    return runs


def _short_commit(env: dict) -> str:
    commit = env.get("commit", "").split(" ")[0]
    is_hex = commit and all(c in "0123456789abcdef" for c in commit)
    return f"commit {commit[:7]}" if is_hex else commit


# ---- the sections -----------------------------------------------------------------------------


def _cards(runs: list[Run], comparisons):
    from archbench.report.render import Card, Cards

    cards = []
    for i, run in enumerate(runs):
        ok = sum(r["status"] == "ok" for r in run.rows)
        failed = len(run.rows) - ok
        lines = [
            ", ".join(x for x in (run.env.get("backend"), f"jax {run.env.get('jax', '?')}") if x),
            f"{ok} cells ran" + (f", {failed} failed" if failed else ""),
            " · ".join(x for x in (run.env.get("date", "")[:10], _short_commit(run.env)) if x),
            run.names,
        ]
        if i == 0:
            big = "baseline" if len(runs) > 1 else f"{ok} cells"
        else:
            g, n = compare.family_geomeans(comparisons[i - 1].pairs)["all"]
            big = f"{units.ratio(g)} speedup" if g else "no cell in common"
            lines.insert(0, f"geometric mean over {n} cells in common with {runs[0].label}")
        cards.append(Card(run.label, big, lines, run.color))
    return Cards(cards)


def _speedup_section(runs: list[Run], comparisons):
    from archbench.report import plots, speedup
    from archbench.report.render import Details, Section

    blocks = [
        "Speedup = step time of the first run / step time of this run, over the cells both "
        "measured (same architecture, size, mode, batch, dtype, devices, sequence length); "
        "geometric mean per family, cells in brackets. Above 1: faster than the first run.",
        speedup.family_table(runs, comparisons),
        plots.speedup_bars(comparisons, [run.label for run in runs]),
    ]
    if not any(cmp.pairs for cmp in comparisons):
        blocks = [f"No cell was measured both by {runs[0].label} and by another run."]
    for run, cmp in zip(runs[1:], comparisons, strict=True):
        if not cmp.pairs:
            continue
        table = speedup.cell_table(cmp, run.label)
        blocks.append(Details(f"Every cell: {run.label} vs {runs[0].label}", [table]))
    return Section(f"Speedup over {runs[0].label}", "speedup", blocks)


def plot_figures(rows: list[dict], labels: list[str]) -> list:
    """The Plots section's plots (Figure or Skipped) of flat rows with run labels."""
    from archbench.report import plots, tables

    headline = tables.headline_rows(rows)
    seq_rows = [r for r in rows if r.get("seq_len")]
    scaling = plots.scaling_plot
    return [
        plots.throughput_bars(headline, labels),
        plots.step_time_vs_params(headline, labels),
        scaling(
            rows, labels, "batch", "step_time_s", "step_time_vs_batch", "Step time vs batch size"
        ),
        scaling(rows, labels, "batch", "memory", "memory_vs_batch", "Memory vs batch size"),
        scaling(
            seq_rows,
            labels,
            "seq_len",
            "step_time_s",
            "step_time_vs_seq_len",
            "Step time vs sequence length",
            guides=(1, 2),
        ),
        scaling(
            rows, labels, "devices", "step_time_s", "step_time_vs_devices", "Step time vs devices"
        ),
        scaling(
            rows, labels, "devices", "memory", "memory_vs_devices", "Memory per device vs devices"
        ),
    ]


def build_sections(runs: list[Run], training_dirs=(), roofline=()) -> list:
    """Everything the report shows, in order, whatever the output format; `roofline`: the
    accelerators (archbench.engine.roofline.ACCELERATORS) to project every cell's bound onto."""
    from archbench.report import curves, profiles, tables
    from archbench.report.operations import operations_section
    from archbench.report.render import Details, Section

    rows = [r for run in runs for r in run.rows]
    labels = [run.label for run in runs]
    comparisons = [
        compare.match_rows(runs[0].rows, run.rows, runs[0].path, run.path) for run in runs[1:]
    ]
    sections = [Section("Runs", "runs", [_cards(runs, comparisons)])]
    if comparisons:
        sections.append(_speedup_section(runs, comparisons))
    sections.append(_main_section(runs, rows))
    sections.append(Section("Plots", "plots", plot_figures(rows, labels)))
    sections += _optional_sections(rows, labels, roofline)
    if training_dirs:
        truns = [curves.load_training_run(d) for d in curves.find_run_dirs(training_dirs)]
        blocks = [curves.training_table(truns), *(curves.curves_figure(t) for t in truns)]
        sections.append(Section("Training curves", "training", blocks))

    profiled = profiles.profile_section(rows)  # --profile traces and --dump-hlo files
    if profiled is not None:
        sections.append(profiled)
    below_roof = operations_section(rows)  # --profile: each op against its roof
    if below_roof is not None:
        sections.append(below_roof)
    sections.append(Section("Environment", "env", [tables.environment_table(runs)]))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        sections.append(
            Section(f"Failed cells ({len(failed)})", "failed", [tables.failed_table(failed)])
        )
    everything = Details(
        f"Every flat row: {len(rows)} cells, every column", [tables.full_table(rows)]
    )
    sections.append(Section("All cells", "all", [everything]))
    return sections


def _main_section(runs: list[Run], rows: list[dict]):
    """The table of one row per architecture and size (and run), with what it leaves out."""
    from archbench.report import tables
    from archbench.report.render import Section

    main, missing = tables.main_table(rows, {run.label: run.color for run in runs})
    note = (
        "One row per architecture and size"
        + (" and run" if len(runs) > 1 else "")
        + ": the largest batch that ran, on the fewest devices, in the run's usual dtype (config). "
        "Step time is the median ± interquartile range"
        + ("; the fastest run's is green" if len(runs) > 1 else "")
        + ". Every cell is under “All cells” (in the HTML, hover a number for detail)."
    )
    if missing:
        note += f" Not reported by any run, so left out: {', '.join(missing)}."
    return Section("Architectures", "main", [note, main])


def _optional_sections(rows: list[dict], labels: list[str], roofline=()) -> list:
    """The sections shown only where some row has what they show: sharding strategies,
    generation, the roofline, rematerialisation, the two FLOP counts, and each field with keys
    to compare (archbench.report.axes)."""
    from archbench.report import axes, counts, generation, remat, strategies
    from archbench.report.render import Section
    from archbench.report.roofline import roofline_section

    sections = []
    sharded = strategies.strategy_table(rows)
    if sharded is not None:
        note = (
            "Cells on several devices or sharded: each strategy's step time, its strong-scaling "
            "efficiency against the same cell on one device of the same run (t1 / (N · tN)), "
            "per-device memory from XLA's memory analysis, and the collectives XLA compiled in "
            "(count and result bytes per device). Plots of step time and memory per device "
            "against devices, one line per strategy, are under Plots."
        )
        sections.append(Section("Sharding strategies", "sharding", [note, sharded]))
    generated = generation.generation_table(rows)
    if generated is not None:
        note = (
            "Generate cells: a prompt of P tokens prefilled at once, then G tokens decoded "
            "greedily one at a time from the cache (the key/value cache of a Transformer, the "
            "recurrent state of Mamba). TTFT is the prefill up to the first token; per token "
            "is the median ± IQR of the decode steps, each giving every sequence of the batch "
            "one token; bandwidth is the decode step's bytes (XLA's cost analysis) per second, "
            "and its fraction of the device's memory bandwidth (datasheet, or a measured copy)."
        )
        figures = generation.generation_figures(rows, labels)
        sections.append(Section("Generation", "generation", [note, generated, *figures]))
    roofs = roofline_section(rows, labels, roofline)
    if roofs is not None:
        sections.append(roofs)
    rematerialised = remat.remat_table(rows)
    if rematerialised is not None:
        sections.append(Section("Rematerialisation", "remat", [remat.NOTE, rematerialised]))
    counted = counts.counts_table(rows)
    if counted is not None:
        sections.append(Section("Two FLOP counts", "counts", [counts.NOTE, counted]))
    for axis in axes.axis_sections():  # one section per axis with keys to compare
        table = axes.axis_table(axis, rows)
        if table is not None:
            note = f"{axis.option}: {axis.help}. Each against the same cell at {axis.default}."
            title = axis.option[2:].replace("-", " ").capitalize()
            sections.append(Section(title, axis.name, [note, table]))
    return sections


# ---- entry points -----------------------------------------------------------------------------


def write_report(paths, html_out=None, md_out=None, training_dirs=(), roofline=()) -> list[Path]:
    """Read the results files `paths`; write the HTML and/or Markdown report.

    Args:
      paths: results files; the first is the baseline of every speedup.
      html_out: the HTML file, or None.
      md_out: the Markdown file, or None; its plots go to <stem>_files/ beside it.
      training_dirs: run directories (or parents of them) whose metrics.jsonl to plot.
      roofline: accelerator names to project every cell's roofline bound onto.
    Returns:
      The files written.
    """
    from archbench.report import render

    runs = load_runs(paths)
    sections = build_sections(runs, training_dirs, roofline)
    title = "archbench report: " + " vs ".join(run.label for run in runs)
    files = sum(len(r.paths) or 1 for r in runs)
    subtitle = f"{files} results file(s): " + ", ".join(r.names for r in runs)
    written = []
    if html_out:
        results.write_atomic(html_out, render.to_html(title, subtitle, sections))
        written.append(Path(html_out))
    if md_out:
        md_out = Path(md_out)
        plot_dir = md_out.parent / f"{md_out.stem}_files"
        results.write_atomic(md_out, render.to_markdown(title, subtitle, sections, plot_dir))
        written.append(md_out)
    return written
