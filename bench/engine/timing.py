"""The timing and memory core that measuring a step (archbench.engine.measure) and a generation
(archbench.engine.generate) share: the memory high-water mark, lowering and compiling ahead
of time (each timed), and the loop of timed rounds."""

from __future__ import annotations

import time

from archbench.engine import analysis


def high_water_mark(devices) -> int:
    """The device peak where the backend keeps one, else the process's peak RSS."""
    peak = analysis.device_peak_bytes(devices)
    return analysis.host_peak_rss_bytes() if peak is None else peak


def lower_and_compile(jitted, *args):
    """Lower and compile `jitted` (a jax.jit function) for `args` ahead of time.

    Returns:
      (lowered, compiled, lower_s, compile_s): the two stages and the seconds each took.
    """
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return lowered, compiled, lowered_at - start, time.perf_counter() - lowered_at


def time_rounds(
    runner,
    *,
    rounds: int | None = None,
    target_s: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 50,
) -> list[float]:
    """Wall time of each `runner.run_round()`: exactly `rounds` of them, else rounds until
    `target_s` has passed, at least `min_rounds` and at most `max_rounds`."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.run_round()
        times.append(time.perf_counter() - t0)
        if rounds is not None:
            done = len(times) >= rounds
        else:
            done = len(times) >= max_rounds or (
                len(times) >= min_rounds and time.perf_counter() - start >= target_s
            )
        if done:
            return times
