"""The report's generation section: cells of mode "generate" (archbench.engine.generate).

A row per generate cell: the prompt P and the tokens decoded G, time to first token (the
prefill, up to its token being ready), the decode step's latency (median ± IQR: every
sequence of the batch gains one token per step), decode tokens/s, the cache's bytes, and the
decode step's achieved memory bandwidth (XLA's bytes accessed per step / its median time)
with its fraction of the device's (a datasheet figure, or a measured copy on CPU). Plots:
decode tokens/s and time to first token against the prompt length and against the batch.
"""

from __future__ import annotations

from collections import defaultdict

from matplotlib.ticker import FuncFormatter, NullFormatter

from archbench import units
from archbench.engine import xla_options
from archbench.report.plots import (
    RUN_STYLES,
    SERIES_COLORS,
    Figure,
    Skipped,
    _style,
    growth_exponent,
    log_axis,
    plt,
    render,
    sweeps,
)
from archbench.report.tables import SHORT_DTYPES, Cell, Table, failure_cell, num

KEY = ("run", "arch", "size", "variant", "xla_options", "dtype", "batch", "prompt_len", "gen_len")


def generate_rows(rows: list[dict]) -> list[dict]:
    """The generate cells, in a stable order."""
    picked = [r for r in rows if r.get("mode") == "generate"]
    return sorted(picked, key=lambda r: tuple(str(r.get(k)) for k in KEY))


def _rate(bytes_per_s: float | None) -> str:
    return "" if bytes_per_s is None else f"{units.nbytes(bytes_per_s)}/s"


def generation_table(rows: list[dict]) -> Table | None:
    """One row per generate cell; None when there is none."""
    picked = generate_rows(rows)
    if not picked:
        return None
    out = []
    for r in picked:
        head = [
            Cell(r["run"]),
            Cell(
                f"{r['arch']}/{r['size']} {SHORT_DTYPES.get(r['dtype'], str(r['dtype']))}"
                + (f" {r['variant']}" if r.get("variant") else "")
                + xla_options.label(r.get("xla_options"))
            ),
            num(str(r.get("batch"))),
            num(str(r.get("prompt_len"))),
            num(str(r.get("gen_len"))),
        ]
        if r.get("status") != "ok":
            out.append([*head, failure_cell(r, 7)])
            continue
        out.append(
            [
                *head,
                num(units.seconds(r.get("prefill_s")), "time to first token (prefill)"),
                num(units.seconds_spread(r.get("decode_token_s"), r.get("decode_token_iqr_s"))),
                num(units.count(r.get("decode_tokens_per_s"))),
                num(units.nbytes(r.get("cache_bytes"))),
                num(_rate(r.get("bandwidth_bytes_per_s")), "bytes_per_token / decode_token_s"),
                num(units.percent(r.get("bandwidth_fraction")), r.get("bandwidth_basis") or ""),
                num(units.seconds(r.get("compile_s")), "prefill + decode step, lower + compile"),
            ]
        )
    columns = ["run", "model", "batch", "P", "G", "TTFT", "per token", "tokens/s", "cache"]
    columns += ["bandwidth", "of peak", "compile"]
    return Table(columns, out, cls="generation")


AXES = {
    "prompt_len": ("prompt length P (tokens)", "prompt lengths", "P"),
    "batch": ("batch", "batch sizes", "B"),
}
PANELS = (("decode_tokens_per_s", "decode tokens/s", "count"), ("prefill_s", "TTFT", "seconds"))


def _series(rows: list[dict], x_key: str) -> dict[tuple, list[dict]]:
    """Generate cells grouped by all of KEY but x_key; series with >= 2 distinct x."""
    groups = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and (r.get(x_key) or 0) > 0 and (r.get("prefill_s") or 0) > 0:
            groups[tuple(r.get(k) for k in KEY if k != x_key)].append(r)
    return sweeps(groups, x_key)


def generation_plot(rows: list[dict], runs: list[str], x_key: str) -> Figure | Skipped:
    """Decode tokens/s and time to first token against `x_key` ("prompt_len" or "batch"),
    log-log, one line per cell configuration, its fitted growth exponent in the legend."""
    x_label, plural, symbol = AXES[x_key]
    name, title = f"generation_vs_{x_key}", f"Generation vs {x_label.split(' (')[0]}"
    series = _series(generate_rows(rows), x_key)
    if not series:
        return Skipped(name, title, f"no generate cell was measured at two or more {plural}")
    rest = [k for k in KEY if k != x_key]
    colors = {}
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(10.4, 3.4), squeeze=False)
        for ax, (y_key, y_label, unit) in zip(axes[0], PANELS, strict=True):
            for key, pts in series.items():
                ident = key[1:]  # the same configuration has one colour in every run
                color = colors.setdefault(ident, SERIES_COLORS[len(colors) % len(SERIES_COLORS)])
                xs, ys = [p[x_key] for p in pts], [p[y_key] for p in pts]
                d = dict(zip(rest, key, strict=True))
                label = f"{d['arch']}/{d['size']} " + " ".join(
                    f"{k[0].upper()}{d[k]}" for k in ("batch", "prompt_len", "gen_len") if k in d
                )
                label += f" {d['variant']}" if d.get("variant") else ""
                label += f" · {d['run']}" if len(runs) > 1 else ""
                slope = growth_exponent(xs, ys)
                label += rf"   $\propto {symbol}^{{{slope:.2f}}}$" if slope is not None else ""
                style = (
                    RUN_STYLES[runs.index(d["run"]) % len(RUN_STYLES)] if d["run"] in runs else "-"
                )
                ax.plot(xs, ys, style, marker="o", ms=3.5, color=color, label=label)
            ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel=y_label, title=y_label)
            log_axis(ax.yaxis, unit)
            ax.set_xticks(sorted({p[x_key] for pts in series.values() for p in pts}))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
        caption = (
            "Log-log. Decode tokens/s = batch / median decode step time; TTFT is the prefill "
            "of the prompt up to the first token. In the legend, the fitted growth exponent."
        )
        return render(fig, name, title, caption, wide=True)


def generation_figures(rows: list[dict], runs: list[str]) -> list:
    """The generation plots: against the prompt length, and against the batch."""
    return [generation_plot(rows, runs, "prompt_len"), generation_plot(rows, runs, "batch")]
