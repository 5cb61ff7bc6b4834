"""Training curves for the report: runs/<recipe>/metrics.jsonl against the recipe's band.

The fit loop writes one JSON line per logged step and per epoch:
{step, epoch, split ("train"|"test"), loss, accuracy, lr, examples_per_s, wall_s}.
The expected band and the target come from train.recipes; a run whose recipe is not known (a
renamed directory, a recipe since removed) is drawn without them. The time to target is read
from the same records (`train.recipe_spec.time_to_target`): the step and the seconds of the
first test evaluation at or past the recipe's target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from archbench import units
from archbench.errors import UserError
from archbench.report.tables import Cell, Table, num
from archbench.train import recipe_spec, recipes

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class Band:
    """The final test metric a recipe must reach: metric ('accuracy'|'bits_per_char'), lo, hi;
    and the easier target whose time to reach the report gives (None: no target)."""

    metric: str
    lo: float
    hi: float
    source: str
    target: float | None = None


@dataclass
class TrainingRun:
    """One run directory's metrics, and its recipe's band where known."""

    name: str
    path: Path
    records: list[dict]
    band: Band | None

    def split(self, split: str) -> list[dict]:
        return [r for r in self.records if r.get("split") == split]

    def final_test(self) -> float | None:
        """The last test record's value of the band's metric (accuracy without a band)."""
        tests = self.split("test")
        return (
            metric_value(tests[-1], self.band.metric if self.band else "accuracy")
            if tests
            else None
        )

    def data_wait(self) -> float | None:
        """The time the train steps waited for data over the train time, summed over the
        epoch lines (None for a log without them)."""
        epochs = [r for r in self.split("train") if r.get("kind") == "epoch" and r.get("train_s")]
        train_s = sum(r["train_s"] for r in epochs)
        return sum(r.get("data_wait_s", 0.0) for r in epochs) / train_s if epochs else None

    def time_to_target(self) -> recipe_spec.Reached | None:
        """The first test evaluation at or past the band's target; None if none reached it
        (or there is no target)."""
        if self.band is None or self.band.target is None:
            return None
        return recipe_spec.time_to_target(self.records, self.band.metric, self.band.target)


def metric_value(record: dict, metric: str) -> float | None:
    """A record's accuracy, or its bits per character from the loss; None if it has none."""
    return recipe_spec.metric_of(record, metric)


def find_run_dirs(paths) -> list[Path]:
    """Each path is a run directory (holding metrics.jsonl) or a parent of run directories."""
    found = []
    for p in map(Path, paths):
        if (p / METRICS_FILE).is_file():
            mine = [p]
        elif p.is_dir():
            mine = sorted(d.parent for d in p.glob(f"*/{METRICS_FILE}"))
        else:
            raise UserError(f"{p}: no such run directory")
        if not mine:
            raise UserError(f"{p}: no {METRICS_FILE} in it or in its subdirectories")
        found.extend(mine)
    return list(dict.fromkeys(found))


def expected_band(name: str) -> Band | None:
    """The band of the recipe `name` from train.recipes; None for an unknown recipe."""
    try:
        recipe = recipes.get(name)
    except UserError:
        return None
    lo, hi = recipe.expected
    target = None if recipe.target is None else float(recipe.target)
    return Band(recipe.metric, float(lo), float(hi), recipe.source, target)


def load_training_run(path: Path) -> TrainingRun:
    """Read a run directory's metrics.jsonl; a corrupt line is a UserError naming the file."""
    file = path / METRICS_FILE
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read ({e})") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break  # a run killed mid-write leaves a partial last line
            raise UserError(f"{file}:{i}: not a JSON line") from None
        if isinstance(rec, dict):
            records.append(rec)
    if not records:
        raise UserError(f"{file}: no metrics in it")
    return TrainingRun(path.name, path, records, expected_band(_recipe_name(path)))


def _recipe_name(path: Path) -> str:
    """The recipe a run directory holds: the "recipe" of its config.json or of the final.json
    a finished fit writes, else the directory name."""
    for file in ("config.json", "final.json"):
        try:
            name = json.loads((path / file).read_text(encoding="utf-8")).get("recipe")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str):
            return name
    return path.name


def curves_figure(run: TrainingRun):
    """Loss and the band's metric against step and against wall time, train and test."""
    from archbench.report import plots

    plt = plots.plt
    metric = run.band.metric if run.band else "accuracy"
    label = "bits/char" if metric == "bits_per_char" else "accuracy"
    with plots._style():
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.0))
        for col, x_key in enumerate(("step", "wall_s")):
            ax_loss, ax_metric = axes[2 * col], axes[2 * col + 1]
            for split, style in (("train", "-"), ("test", "o-")):
                recs = [r for r in run.split(split) if isinstance(r.get(x_key), int | float)]
                xs = [r[x_key] for r in recs]
                loss = [r.get("loss") for r in recs]
                if any(v is not None for v in loss):
                    ax_loss.plot(xs, loss, style, ms=3, lw=1, label=split)
                values = [metric_value(r, metric) for r in recs]
                if any(v is not None for v in values):
                    ax_metric.plot(xs, values, style, ms=3, lw=1, label=split)
            if run.band:
                ax_metric.axhspan(
                    run.band.lo, run.band.hi, color="#3a9a5b", alpha=0.18, label="expected"
                )
            if run.band and run.band.target is not None:
                ax_metric.axhline(run.band.target, color="#555555", ls="--", lw=1, label="target")
            xlabel = "step" if x_key == "step" else "wall time (s)"
            ax_loss.set(xlabel=xlabel, ylabel="loss", title=f"loss vs {xlabel.split(' (')[0]}")
            ax_metric.set(xlabel=xlabel, ylabel=label, title=f"{label} vs {xlabel.split(' (')[0]}")
            ax_metric.legend(loc="best")
        caption = (
            f"Shaded: expected test {label} ({run.band.source})."
            + (" Dashed: the target." if run.band.target is not None else "")
            if run.band
            else "No recipe band known for this run."
        )
        return plots.render(fig, f"curves_{run.name}", f"Training: {run.name}", caption, wide=True)


def training_table(runs: list[TrainingRun]) -> Table:
    """Per run: epochs, steps, wall time, data wait, final test metric, expected band, verdict,
    and the target with the steps and seconds to reach it ("not reached")."""
    rows = []
    for run in runs:
        last = run.records[-1]
        final = run.final_test()
        band = run.band
        metric = band.metric if band else "accuracy"
        shown = (
            units.percent(final)
            if metric == "accuracy"
            else (f"{final:.3f}" if final is not None else "")
        )
        if band and final is not None:
            ok = band.lo <= final <= band.hi
            verdict = Cell("within" if ok else "OUTSIDE", cls="" if ok else "fail")
            band_text = (
                units.percent(band.lo) + "–" + units.percent(band.hi)
                if metric == "accuracy"
                else f"{band.lo:g}–{band.hi:g}"
            )
        else:
            verdict, band_text = Cell(""), ""
        target, steps, seconds = _to_target(run)
        rows.append(
            [
                Cell(run.name, str(run.path)),
                num(units.plain(last.get("epoch"))),
                num(units.plain(last.get("step"))),
                num(units.seconds(last.get("wall_s"))),
                num(units.percent(run.data_wait())),
                num(shown),
                num(band_text, band.source if band else ""),
                verdict,
                num(target),
                steps,
                seconds,
            ]
        )
    cols = [
        "run", "epoch", "step", "wall time", "data wait", "final test", "expected", "verdict",
        "target", "steps to target", "time to target",
    ]  # fmt: skip
    return Table(cols, rows, cls="training")


def _to_target(run: TrainingRun) -> tuple[str, Cell, Cell]:
    """The target's text and the cells of the steps and seconds to reach it: empty without a
    target, "not reached" when no test evaluation reached it."""
    band = run.band
    if band is None or band.target is None:
        return "", Cell(""), Cell("")
    target = units.percent(band.target) if band.metric == "accuracy" else f"{band.target:g}"
    reached = run.time_to_target()
    if reached is None:
        return target, Cell("not reached", cls="fail"), Cell("")
    where = f"epoch {reached.epoch}, test {reached.value:.4g}"
    return target, num(units.plain(reached.step), where), num(units.seconds(reached.seconds))
