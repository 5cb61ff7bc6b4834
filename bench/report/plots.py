"""The report's plots: matplotlib (Agg) figures rendered to deterministic SVG text.

Each plot function takes flat rows (with the report's `run` label) and returns a Figure, or
a Skipped with a one-line reason when the data for it is absent. Scaling plots write the
fitted growth exponent (least-squares slope in log-log) of every series on the plot.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from archbench import units

RUN_COLORS = ["#3b6fb6", "#e07b39", "#3a9a5b", "#c43d4b", "#8a63b8", "#8c6d46", "#d264b0"]
SERIES_COLORS = plt.get_cmap("tab10").colors
RUN_MARKERS = "osD^vPX*"
RUN_STYLES = ["-", "--", ":", "-."]
MODES = ("train", "infer")


@dataclass
class Figure:
    """A rendered plot: file stem, title, SVG text, caption; wide ones span the page."""

    name: str
    title: str
    svg: str
    caption: str = ""
    wide: bool = False
    figure: object = field(default=None, repr=False)  # the matplotlib Figure (archbench.plot)


@dataclass
class Skipped:
    """A plot left out, and why."""

    name: str
    title: str
    reason: str


def render(fig, name: str, title: str, caption: str = "", wide: bool = False) -> Figure:
    """SVG text of `fig` with ids salted by `name` and no date: same data, same bytes."""
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": f"archbench-{name}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return Figure(name, title, buf.getvalue(), caption, wide, fig)


def _style():
    return plt.rc_context(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.fontsize": 8,
            "legend.frameon": False,
        }
    )


def growth_exponent(xs, ys) -> float | None:
    """Least-squares slope of log(y) on log(x): 1 linear, 2 quadratic; None below 2 points."""
    pts = [
        (math.log(x), math.log(y))
        for x, y in zip(xs, ys, strict=True)
        if x and y and x > 0 and y > 0
    ]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _ok(r: dict, key: str) -> bool:
    v = r.get(key)
    return r.get("status") == "ok" and isinstance(v, int | float) and v > 0


UNIT_FORMATS = {"seconds": units.seconds, "bytes": units.nbytes, "count": units.count}


def log_axis(axis, unit: str) -> None:
    """Log-scale ticks labelled in `unit` (seconds, bytes, count): 1-2-5 steps, or powers of 2
    for bytes, thinned to about 8; minor ticks unlabelled."""
    if unit == "bytes":
        axis.set_major_locator(LogLocator(base=2, numticks=8))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: UNIT_FORMATS[unit](v)))
    axis.set_minor_formatter(NullFormatter())


def _modes(rows) -> list[str]:
    return [m for m in MODES if any(r["mode"] == m for r in rows)]


# ---- step time vs parameters ------------------------------------------------------------------


MIN_SLOPE_ARCHS = 3


def step_time_vs_params(rows: list[dict], runs: list[str]) -> Figure | Skipped:
    """Log-log scatter of the headline cells, coloured by family, one marker per run."""
    title = "Step time vs parameter count"
    rows = [r for r in rows if _ok(r, "step_time_s") and _ok(r, "params")]
    if not rows:
        why = "no train or infer cell ran with a known parameter count"
        return Skipped("step_time_vs_params", title, why)
    names = sorted({r.get("family") or "" for r in rows})
    families = {f: SERIES_COLORS[i % len(SERIES_COLORS)] for i, f in enumerate(names)}
    modes = _modes(rows)
    with _style():
        fig, axes = plt.subplots(
            1, len(modes), figsize=(4.6 * len(modes) + 1.6, 3.6), squeeze=False
        )
        slopes = []
        for ax, mode in zip(axes[0], modes, strict=True):
            for i, run in enumerate(runs):
                pts = [r for r in rows if r["mode"] == mode and r["run"] == run]
                for r in pts:
                    ax.scatter(
                        r["params"],
                        r["step_time_s"],
                        s=30,
                        marker=RUN_MARKERS[i % 8],
                        color=families.get(r.get("family") or "", "grey"),
                        alpha=0.85,
                        edgecolors="black",
                        linewidths=0.3,
                    )
                k = growth_exponent([r["params"] for r in pts], [r["step_time_s"] for r in pts])
                # Two architectures always fit a line exactly, and models that differ in more
                # than size make that slope meaningless: a slope needs MIN_SLOPE_ARCHS of them.
                if k is not None and len({r["params"] for r in pts}) >= MIN_SLOPE_ARCHS:
                    slopes.append(f"{mode}{f' {run}' if len(runs) > 1 else ''} {k:.2f}")
            ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="step time", title=mode)
            log_axis(ax.xaxis, "count")
            log_axis(ax.yaxis, "seconds")
        handles = [
            Line2D([], [], ls="", marker="o", color=color, label=f) for f, color in families.items()
        ]
        if len(runs) > 1:
            handles += [
                Line2D(
                    [], [], ls="", marker=RUN_MARKERS[i % 8], color="black", mfc="none", label=run
                )
                for i, run in enumerate(runs)
            ]
        axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1))
        caption = "Headline cell of each architecture and size; colour: family."
        if slopes:
            caption += " Log-log slope over all architectures: " + ", ".join(slopes) + "."
        return render(fig, "step_time_vs_params", title, caption)


# ---- throughput bars --------------------------------------------------------------------------


def throughput_bars(rows: list[dict], runs: list[str]) -> Figure | Skipped:
    """samples/s of each architecture and size, one bar per run, train and infer panels."""
    title = "Throughput per architecture"
    ok = [r for r in rows if _ok(r, "samples_per_s")]
    if not ok:
        return Skipped("throughput", title, "no train or infer cell ran")
    cats = sorted(
        {(r.get("family") or "", r["arch"], r["size"]) for r in rows},
        key=lambda c: (c[0], c[1], units.size_rank(c[2])),
    )
    by_cell = {(r["run"], r["mode"], r["arch"], r["size"]): r for r in rows}
    modes = _modes(rows)
    width = 0.8 / len(runs)
    with _style():
        fig, axes = plt.subplots(
            len(modes),
            1,
            figsize=(
                min(16, 2.5 + 0.42 * len(cats) * max(1, len(runs) ** 0.5)),
                2.6 * len(modes) + 0.8,
            ),
            squeeze=False,
            sharex=True,
        )
        for ax, mode in zip(axes[:, 0], modes, strict=True):
            for i, run in enumerate(runs):
                cells = [by_cell.get((run, mode, arch, size)) for _, arch, size in cats]
                offset = -0.4 + width * (i + 0.5)
                _run_bars(ax, cells, offset, width, RUN_COLORS[i % len(RUN_COLORS)], run)
            ax.set(yscale="log", ylabel="samples/s", title=mode)
            log_axis(ax.yaxis, "count")
            ax.grid(axis="x", visible=False)
        axes[-1][0].set_xticks(
            range(len(cats)), [f"{a}/{s}" for _, a, s in cats], rotation=40, ha="right"
        )
        if len(runs) > 1:
            axes[0][0].legend(loc="upper left", bbox_to_anchor=(1.0, 1))
        return render(
            fig,
            "throughput",
            title,
            "Headline cell of each architecture and size; log scale.",
            wide=True,
        )


_FAILED_LABEL = {"rotation": 90, "ha": "center", "va": "bottom", "fontsize": 7, "color": "#c43d4b"}


def _run_bars(ax, cells: list, offset: float, width: float, color: str, label: str) -> None:
    """One run's bars in one panel: samples/s of each category that ran (`cells`, None where
    the run has none), and the status of each that failed."""
    xs, ys, failed = [], [], []
    for j, r in enumerate(cells):
        if r is not None and _ok(r, "samples_per_s"):
            xs.append(j + offset)
            ys.append(r["samples_per_s"])
        elif r is not None:
            failed.append((j + offset, r["status"]))
    ax.bar(xs, ys, width * 0.92, color=color, label=label)
    for x, status in failed:  # upright, from the bottom of the panel
        ax.text(x, 0.02, status, transform=ax.get_xaxis_transform(), **_FAILED_LABEL)


# ---- scaling: a metric against batch, sequence length or devices -----------------------------


# How a series names the configuration that sets it apart: "b=8", "T=128", "×2 dev".
SHORT = {"batch": "b=", "dtype": "", "devices": "dev=", "seq_len": "T=", "sharding": ""}
SHORT["variant"] = ""
SHORT["remat"] = "remat "
# What tells two cells of one architecture, size and mode apart: a series varies one of them.
SERIES_KEYS = tuple(SHORT)

# x key: (axis label, plural for notes, symbol of the fitted power law)
SCALING = {
    "batch": ("batch size", "batch sizes", "B"),
    "seq_len": ("sequence length", "sequence lengths", "T"),
    "devices": ("devices", "device counts", "N"),
}


CELL = ("arch", "size", "mode")


def _series(rows, x_key, y_key):
    """Rows grouped by everything that identifies a cell except x_key; >= 2 distinct x."""
    groups = defaultdict(list)
    others = [k for k in (*CELL, *SERIES_KEYS) if k != x_key]
    for r in rows:  # train and infer: generate cells have plots of their own (generation.py)
        if r.get("mode") not in MODES:
            continue
        if _ok(r, y_key) and isinstance(r.get(x_key), int | float) and r[x_key] > 0:
            groups[(r["run"], *(r.get(k) for k in others))].append(r)
    return sweeps(groups, x_key)


def sweeps(groups: dict[tuple, list[dict]], x_key: str) -> dict[tuple, list[dict]]:
    """Each group's rows as one series: one point per `x_key` value (the last row given),
    sorted by it; only the groups with two or more values."""
    out = {}
    for key, pts in groups.items():
        pts = sorted({p[x_key]: p for p in pts}.values(), key=lambda p: p[x_key])
        if len(pts) >= 2:
            out[key] = pts
    return out


def _guide(ax, pts, x_key, y_key, power, symbol):
    """A dotted line of slope `power` through the geometric centre of the points."""
    xs, ys = [p[x_key] for p in pts], [p[y_key] for p in pts]
    x0 = math.exp(sum(map(math.log, xs)) / len(xs))
    y0 = math.exp(sum(map(math.log, ys)) / len(ys))
    gx = [min(xs), max(xs)]
    gy = [y0 * (x / x0) ** power for x in gx]
    ax.plot(gx, gy, color="grey", lw=0.9, ls=(0, (1, 2)), zorder=1)
    text = f"∝ {symbol}" + ("²" if power == 2 else "" if power == 1 else f"^{power:g}")
    ax.annotate(
        text, (gx[1], gy[1]), fontsize=7, color="grey", xytext=(3, 0), textcoords="offset points"
    )


def scaling_plot(rows, runs, x_key, y_key, name, title, guides=()) -> Figure | Skipped:
    """y_key against x_key in log-log, one line per series, its fitted exponent in the legend.

    A series is one cell's configuration with only x_key varying; its colour says which (the
    same in every run), its line style which run. `guides` draws reference slopes (1: linear, 2: quadratic).
    """
    x_label, plural, symbol = SCALING[x_key]
    if y_key == "memory":
        rows = [{**r, "memory": r.get("peak_bytes") or r.get("compiled_bytes")} for r in rows]
    series = _series(rows, x_key, y_key)
    if not series:
        reason = f"no architecture was measured at two or more {plural}"
        if x_key == "batch" and any(r.get("mode") == "generate" for r in rows):
            reason += " (generate cells: generation_vs_batch, under Generation)"
        return Skipped(name, title, reason)
    modes = [m for m in MODES if any(k[3] == m for k in series)]
    others = [k for k in SERIES_KEYS if k != x_key]
    varying = [i for i, k in enumerate(others) if len({key[4 + i] for key in series}) > 1]

    def identity(key):  # what a series is, whatever the run and mode: its colour
        return (key[1], key[2], *(key[4 + i] for i in varying))

    def describe(key):
        extra = [f"{SHORT[others[i]]}{key[4 + i]}" for i in varying if key[4 + i] is not None]
        return " ".join([f"{key[1]}/{key[2]}", *extra])

    idents = sorted({identity(k) for k in series}, key=lambda t: tuple(map(str, t)))
    colors = {ident: SERIES_COLORS[i % len(SERIES_COLORS)] for i, ident in enumerate(idents)}
    with _style():
        fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.4), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            mine = {key: pts for key, pts in series.items() if key[3] == mode}
            labels = []
            for key, pts in mine.items():
                run = key[0]
                xs, ys = [p[x_key] for p in pts], [p[y_key] for p in pts]
                label = describe(key) + (f" · {run}" if len(runs) > 1 else "")
                labels.append(label)
                label += rf"   $\propto {symbol}^{{{growth_exponent(xs, ys):.2f}}}$"
                style = RUN_STYLES[runs.index(run) % len(RUN_STYLES)] if run in runs else "-"
                ax.plot(xs, ys, style, marker="o", ms=3.5, color=colors[identity(key)], label=label)
            all_pts = [p for pts in mine.values() for p in pts]
            for power in guides:
                _guide(ax, all_pts, x_key, y_key, power, symbol)
            ax.set(xscale="log", yscale="log", xlabel=x_label, title=mode)
            ax.set_ylabel(
                "memory / device (peak, else compiled)" if y_key == "memory" else "step time"
            )
            log_axis(ax.yaxis, "bytes" if y_key == "memory" else "seconds")
            ax.set_xticks(sorted({p[x_key] for p in all_pts}))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ncol = 2 if max(map(len, labels)) <= 20 else 1
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol)
        caption = (
            f"Log-log. In the legend, the fitted growth exponent (least-squares slope): "
            f"{symbol}^1 is linear cost, {symbol}^2 quadratic."
        )
        return render(fig, name, title, caption)


def speedup_bars(comparisons, labels: list[str]) -> Figure | Skipped:
    """Per architecture and size, the geometric-mean speedup of each run over the first."""
    title = f"Speedup over {labels[0]}"
    per_run = []
    for cmp in comparisons:
        by_arch = defaultdict(list)
        for p in cmp.pairs:
            if p.speedup:
                by_arch[(p.family, p.key[0], p.key[1])].append(p.speedup)
        per_run.append({a: units.geomean(v) for a, v in by_arch.items()})
    cats = sorted(
        {a for d in per_run for a in d}, key=lambda c: (c[0], c[1], units.size_rank(c[2]))
    )
    if not cats:
        return Skipped("speedup", title, "no cell ran in both the first run and another")
    width = 0.8 / len(per_run)
    with _style():
        fig, ax = plt.subplots(figsize=(min(16, 2.5 + 0.42 * len(cats) * len(per_run) ** 0.5), 2.8))
        for i, d in enumerate(per_run):
            xs = [j - 0.4 + width * (i + 0.5) for j, c in enumerate(cats) if c in d]
            values = [d[c] for c in cats if c in d]
            bars = ax.bar(
                xs,
                values,
                width * 0.92,
                color=RUN_COLORS[(i + 1) % len(RUN_COLORS)],
                label=labels[i + 1],
            )
            ax.bar_label(bars, [f"{v:.2f}×" for v in values], fontsize=7, padding=1)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set(yscale="log", ylabel=f"speedup over {labels[0]}")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(cats)), [f"{a}/{s}" for _, a, s in cats], rotation=40, ha="right")
        ax.grid(axis="x", visible=False)
        if len(per_run) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1))
        caption = "Per architecture and size, geometric mean over the cells both runs measured."
        return render(fig, "speedup", title, caption)
