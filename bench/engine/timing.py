"""The timing and memory core that measuring a step (archbench.engine.measure) and a generation
(archbench.engine.generate) share: the memory high-water mark, lowering and compiling ahead
of time (each timed), and the loop of timed rounds."""

from __future__ import annotations

import time

import jax

from archbench.engine import analysis

# JAX reports each use of its persistent compilation cache as a monitoring event: a compile
# that consults the cache, and a compile that the cache answered.
_CACHE_EVENTS = {
    "/jax/compilation_cache/compile_requests_use_cache": "used",
    "/jax/compilation_cache/cache_hits": "hits",
}
_cache_counts = {"used": 0, "hits": 0}


def _count_cache_event(event: str, **_) -> None:
    if event in _CACHE_EVENTS:
        _cache_counts[_CACHE_EVENTS[event]] += 1


jax.monitoring.register_event_listener(_count_cache_event)


def high_water_mark(devices) -> int:
    """The device peak where the backend keeps one, else the process's peak RSS."""
    peak = analysis.device_peak_bytes(devices)
    return analysis.host_peak_rss_bytes() if peak is None else peak


def lower_and_compile(jitted, *args):
    """Lower and compile `jitted` (a jax.jit function) for `args` ahead of time.

    Returns:
      (lowered, compiled, lower_s, compile_s, cache): the two stages, the seconds each took,
      and what JAX's persistent compilation cache did for the compile: "disabled" (not
      configured: compile_s is XLA's compile), "miss" (compiled, then stored) or "hit"
      (compile_s is the time to load an executable compiled earlier).
    """
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    before = dict(_cache_counts)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - lowered_at
    return lowered, compiled, lowered_at - start, compile_s, _cache_outcome(before)


def _cache_outcome(before: dict) -> str:
    # JAX consults its cache whenever it is enabled, but keeps nothing without a folder.
    if _cache_counts["used"] == before["used"] or not jax.config.jax_compilation_cache_dir:
        return "disabled"
    return "hit" if _cache_counts["hits"] > before["hits"] else "miss"


def combined_cache_outcome(*outcomes: str) -> str:
    """One word for several compiles: "hit" only if every one was answered by the cache."""
    if all(o == "disabled" for o in outcomes):
        return "disabled"
    return "hit" if all(o == "hit" for o in outcomes) else "miss"


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
