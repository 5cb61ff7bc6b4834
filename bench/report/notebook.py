"""The report's plots for a notebook: results files or a DataFrame of flat rows -> matplotlib
Figures (archbench.plot).

The figures are the report's own (archbench.report.plots, generation), drawn from the same
flat rows: the report's run labels for files, one run per `source` file for a DataFrame.
"""

from __future__ import annotations

import math
from pathlib import Path

from archbench.errors import UserError

# Cell keys that are whole numbers; a DataFrame column with a missing value holds them as floats.
INTEGER_KEYS = ("batch", "devices", "seq_len", "prompt_len", "gen_len", "params")


def _plain(key: str, value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if key in INTEGER_KEYS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def rows_from_frame(frame) -> list[dict]:
    """Flat rows from a DataFrame of them (archbench.load, perhaps filtered): NaN back to
    None, and a `run` label per source file where the frame has none."""
    rows = [{k: _plain(k, v) for k, v in r.items()} for r in frame.to_dict("records")]
    if rows and "status" not in rows[0]:
        raise UserError("plot: the DataFrame has no 'status' column; pass archbench.load's rows")
    sources = list(dict.fromkeys(r.get("source") for r in rows))
    for r in rows:
        if r.get("run") is None:
            r["run"] = Path(str(r.get("source") or "results")).stem
        r.setdefault("run_index", sources.index(r.get("source")))
    return rows


def rows_of(data) -> list[dict]:
    """Flat rows with run labels from a results file, a list of them, or a DataFrame."""
    from archbench.report import document

    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return rows_from_frame(data)
    paths = [data] if isinstance(data, str | Path) else list(data)
    return [r for run in document.load_runs(paths) for r in run.rows]


def figures(data, roofline=()) -> dict:
    """Every plot of the report, by name: a plots.Figure (its matplotlib Figure in `.figure`),
    or a plots.Skipped saying why the data cannot draw it.

    Args:
      data: a results file, a list of them, or a DataFrame of flat rows.
      roofline: accelerators (archbench.engine.roofline.ACCELERATORS) the roofline plot also
        shows every cell's bounds on.
    """
    from archbench.report import document, generation
    from archbench.report.roofline import entries
    from archbench.report.roofline_plot import roofline_figure

    rows = rows_of(data)
    labels = list(dict.fromkeys(r["run"] for r in rows))
    drawn = [*document.plot_figures(rows, labels), *generation.generation_figures(rows, labels)]
    drawn.append(roofline_figure(entries(rows, roofline)))
    return {f.name: f for f in drawn}
