"""What a training recipe is: its optimizer, its learning-rate schedule, the band its final
test metric must reach and the target whose time to reach it the report gives.

`train.recipes` names the recipes and re-exports these classes. Accuracy is a fraction in
[0, 1]; bits per character is loss / ln 2 (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optax

METRICS = ("accuracy", "bits_per_char")


@dataclass(frozen=True)
class Constant:
    """A constant learning rate."""

    lr: float

    def __call__(self, total_steps: int) -> optax.Schedule:
        return optax.constant_schedule(self.lr)


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `end`."""

    peak: float
    warmup_steps: int = 0
    end: float = 0.0

    def __call__(self, total_steps: int) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            0.0, self.peak, self.warmup_steps, max(total_steps, self.warmup_steps + 1), self.end
        )


@dataclass(frozen=True)
class Optimizer:
    """An optax optimizer by name (`optax.sgd`, `optax.adam`, ...), called with the schedule.

    weight_decay adds `optax.add_decayed_weights` before the optimizer (L2 on every
    parameter, as Caffe and Torch applied it in the ResNet paper); clip_norm clips the
    global gradient norm first.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __call__(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        parts = []
        if self.clip_norm:
            parts.append(optax.clip_by_global_norm(self.clip_norm))
        if self.weight_decay:
            parts.append(optax.add_decayed_weights(self.weight_decay))
        parts.append(getattr(optax, self.name)(learning_rate=schedule, **self.kwargs))
        return optax.chain(*parts) if len(parts) > 1 else parts[0]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        text = f"optax.{self.name}({args})"
        if self.weight_decay:
            text += f" + weight decay {self.weight_decay:g}"
        if self.clip_norm:
            text += f" + clip {self.clip_norm:g}"
        return text


@dataclass(frozen=True)
class Recipe:
    """A named training run and the result it must reach.

    transform: name of an input transform (see `train.fit.TRANSFORMS`) or None.
    overrides: keyword arguments for `spec.build(size, **overrides)`.
    expected: (lo, hi) band of the final test metric; `source` says where it comes from.
    target: a test metric a bit easier than the band's low end; the report gives the steps
      and seconds a run took to first reach it (`time_to_target`). None: no target.
    checkpoint_every: epochs between checkpoints (the last epoch is always saved).
    """

    name: str
    arch: str
    size: str
    dataset: str
    optimizer: Optimizer
    schedule: Constant | WarmupCosine
    epochs: int
    batch: int
    expected: tuple[float, float]
    source: str
    seed: int = 0
    metric: str = "accuracy"
    transform: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    eval_batch: int = 1000
    log_every: int = 50
    checkpoint_every: int = 1
    note: str = ""
    target: float | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"{self.name}: metric {self.metric!r} not in {METRICS}")
        lo, hi = self.expected
        if not lo <= hi:
            raise ValueError(f"{self.name}: expected band {self.expected} is empty")
        if self.target is not None and not self.reaches(lo if self.better_high else hi):
            raise ValueError(f"{self.name}: target {self.target} is harder than its band")

    @property
    def better_high(self) -> bool:
        """Whether a higher metric is better (accuracy) or lower (bits per character)."""
        return self.metric == "accuracy"

    def reaches(self, value: float) -> bool:
        """Whether a test metric `value` has reached the target (False without one)."""
        if self.target is None:
            return False
        return value >= self.target if self.better_high else value <= self.target

    def config(self, epochs: int | None = None) -> dict:
        """The JSON-able description of a run of this recipe (stored with its checkpoints)."""
        return {
            "recipe": self.name,
            "arch": self.arch,
            "size": self.size,
            "overrides": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.overrides.items()
            },
            "dataset": self.dataset,
            "transform": self.transform,
            "optimizer": self.optimizer.describe(),
            "schedule": repr(self.schedule),
            "epochs": self.epochs if epochs is None else epochs,
            "batch": self.batch,
            "seed": self.seed,
            "metric": self.metric,
        }

    def in_band(self, value: float) -> bool:
        lo, hi = self.expected
        return lo <= value <= hi

    def describe_band(self) -> str:
        lo, hi = self.expected
        if self.metric == "accuracy":
            return f"{100 * lo:.1f}-{100 * hi:.1f}%"
        return f"{lo:.2f}-{hi:.2f} bits/char"

    def describe_target(self) -> str:
        if self.target is None:
            return ""
        if self.metric == "accuracy":
            return f"{100 * self.target:.1f}%"
        return f"{self.target:.2f} bits/char"


# ---- time to target ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reached:
    """The first evaluation at which a run reached its target, as AlgoPerf scores a run: the
    step, the epoch, and the wall-clock seconds since the run started less the time spent
    evaluating (compilation and checkpoints count); value is the test metric there."""

    step: int
    epoch: int | None
    seconds: float
    value: float


def metric_of(record: dict, metric: str) -> float | None:
    """A metrics record's value of `metric`; bits per character from its loss."""
    if metric == "bits_per_char":
        loss = record.get("loss")
        return loss / math.log(2) if isinstance(loss, int | float) else None
    value = record.get(metric)
    return value if isinstance(value, int | float) else None


def time_to_target(records, metric: str, target: float) -> Reached | None:
    """The first test record (fit's JSONL lines with split "test", in order) whose `metric`
    reaches `target` (at least it for accuracy, at most it for bits per character), or None
    if none does. Seconds: the record's wall_s less the eval_s of every test record up to and
    including it (a log without eval_s counts none)."""
    evaluating = 0.0
    for record in records:
        if record.get("split") != "test":
            continue
        evaluating += record.get("eval_s") or 0.0
        value = metric_of(record, metric)
        if value is None or not isinstance(record.get("wall_s"), int | float):
            continue
        if value >= target if metric == "accuracy" else value <= target:
            return Reached(
                record["step"], record.get("epoch"), record["wall_s"] - evaluating, value
            )
    return None
