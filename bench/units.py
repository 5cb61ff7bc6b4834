"""Human-readable numbers for reports and comparisons: seconds, bytes, counts, ratios."""

from __future__ import annotations

import math

SIZE_ORDER = ("tiny", "small", "base", "large")


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def seconds(s: float | None) -> str:
    """1,034 s, 1.23 s, 45.6 ms, 789 µs, 12.0 ns; '' when unknown."""
    if not _finite(s):
        return ""
    if abs(s) >= 1000:  # whole seconds, not '1.03e+03 s'
        return f"{s:,.0f} s"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def seconds_spread(median: float | None, iqr: float | None) -> str:
    """Median ± IQR in the median's unit: '12.3 ± 0.4 ms'."""
    text = seconds(median)
    if not text or not _finite(iqr):
        return text
    value, unit = text.split(" ")
    spread = iqr / {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}[unit]
    shown = f"{spread:.0f}" if spread >= 10 else f"{spread:.2g}"
    return f"{value} ± {shown} {unit}"


def count(x: float | None, unit: str = "") -> str:
    """Metric prefixes: 1.23 k, 4.5 M, 6.78 G, 9 T (3 significant digits)."""
    if not _finite(x):
        return ""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def nbytes(b: float | None) -> str:
    """Binary prefixes: 512 B, 1.5 KiB, 12.3 MiB, 4.00 GiB."""
    if not _finite(b):
        return ""
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def percent(x: float | None) -> str:
    """A fraction as a percentage: 0.0123 -> '1.23%'."""
    return f"{100 * x:.3g}%" if _finite(x) else ""


def ratio(x: float | None) -> str:
    """A speedup or ratio: '2.00×'."""
    return f"{x:.2f}×" if _finite(x) else ""


def plain(x) -> str:
    """Any value for the full table: floats to 4 significant digits, None as ''."""
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def size_rank(size: str) -> tuple[int, str]:
    """Sort key putting sizes in the order tiny, small, base, large, then others by name."""
    return (SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER), size)


def geomean(values) -> float | None:
    """Geometric mean of the positive finite values; None when there are none."""
    logs = [math.log(v) for v in values if _finite(v) and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None
