"""The roofline plot: one panel per accelerator (and dtype), log-log, arithmetic intensity
(FLOPs per byte accessed) against FLOP/s.

Each panel draws its accelerator's two roofs, the memory roof (intensity x bandwidth) rising
to meet the compute roof (the peak) at the ridge point, which is marked. A cell is one point
at its arithmetic intensity: filled at the FLOP/s it achieved (a measured cell: FLOPs / step
time), hollow at the FLOP/s its bound allows (FLOPs / bound: a projection, or a cell compiled
only). A measured point can sit far below the roof; a bound lies on it, or below it where the
communication roof binds. Devices simulated on one host share its roofs, so their points
count every device's FLOPs against the host's.
"""

from __future__ import annotations

import math

from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from archbench import units
from archbench.report.plots import SERIES_COLORS, Figure, Skipped, _style, plt, render

NAME, TITLE = "roofline", "Roofline"
PER_ROW = 3


def _panels(found: list[dict]) -> dict[tuple, list[dict]]:
    """Entries with a known peak and intensity, by (accelerator, basis kind, dtype)."""
    panels: dict[tuple, list[dict]] = {}
    for e in found:
        if not e.get("peak_flops_per_s") or not e.get("arithmetic_intensity"):
            continue
        own = "bound" if e["basis"] == "bound, not measured" else "run"
        key = (e["accelerator"] or "?", own, e["dtype"], e["run"] if own == "run" else "")
        panels.setdefault(key, []).append(e)
    return panels


def point(e: dict) -> tuple[float, float, bool] | None:
    """(intensity, FLOP/s, filled) of one entry: achieved when measured, else allowed by the
    bound; None without one."""
    scale = (e.get("devices") or 1) if e.get("shared") else 1
    flops = (e.get("device_flops_per_step") or 0) * scale
    measured = e.get("step_time_s")
    time = measured or e.get("roofline_bound_s")
    if not flops or not time:
        return None
    return e["arithmetic_intensity"], flops / time, bool(measured)


def _flops_axis(axis) -> None:
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: units.count(v, "FLOP/s")))
    axis.set_minor_formatter(NullFormatter())


def _draw(ax, key, entries, colors) -> None:
    peak = entries[0]["peak_flops_per_s"]  # one device's, or the host's that all share
    memory = entries[0].get("memory_bytes_per_s")
    points = [(e, p) for e in entries if (p := point(e)) is not None]
    xs = [p[0] for _, p in points]
    ridge = peak / memory if memory else None
    lo = min([*xs, ridge or math.inf]) / 4
    hi = max([*xs, ridge or 0]) * 4
    if memory:
        ax.plot([lo, ridge, hi], [lo * memory, peak, peak], color="black", lw=1.2)
        ax.plot([ridge], [peak], "kD", ms=5)
        ax.annotate(f"ridge {ridge:.3g} FLOP/B", (ridge, peak), fontsize=7, xytext=(-4, 4),
                    textcoords="offset points", ha="right")  # fmt: skip
    else:
        ax.axhline(peak, color="black", lw=1.2)
    for e, (x, y, filled) in points:
        color = colors[e.get("family") or ""]
        ax.scatter(x, y, s=28, marker="o", color=color if filled else "none",
                   edgecolors=color, linewidths=1.2, zorder=3)  # fmt: skip
    accelerator, own, dtype, run = key
    what = "measured" if own == "run" else "bounds, not measured"
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), xlabel="arithmetic intensity (FLOP/B)")
    run = f" · {run}" if run and run != accelerator else ""
    ax.set_title(f"{accelerator} · {dtype}{run}\n{what}")
    _flops_axis(ax.yaxis)


def roofline_figure(found: list[dict]) -> Figure | Skipped:
    """One panel per accelerator of the roofline entries (archbench.report.roofline.entries)."""
    panels = _panels(found)
    if not panels:
        return Skipped(NAME, TITLE, "no cell has a FLOP count and a known peak")
    names = sorted({e.get("family") or "" for pts in panels.values() for e in pts})
    colors = {f: SERIES_COLORS[i % len(SERIES_COLORS)] for i, f in enumerate(names)}
    rows = math.ceil(len(panels) / PER_ROW)
    cols = min(len(panels), PER_ROW)
    with _style():
        fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols + 1.4, 3.6 * rows), squeeze=False)
        for ax, (key, entries) in zip(axes.flat, panels.items(), strict=False):
            _draw(ax, key, entries, colors)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        axes[0][0].set_ylabel("FLOP/s")
        handles = [Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in colors.items()]
        handles += [
            Line2D([], [], ls="", marker="o", color="grey", label="measured"),
            Line2D([], [], ls="", marker="o", mfc="none", color="grey", label="bound"),
        ]
        axes[0][cols - 1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1))
        caption = (
            "Log-log. Black: the compute roof (peak FLOP/s) and the memory roof (intensity × "
            "bandwidth), meeting at the ridge (◆). Filled: FLOP/s a cell achieved (measured); "
            "hollow: FLOP/s its bound allows (not measured). Colour: family."
        )
        return render(fig, NAME, TITLE, caption, wide=cols > 1)
