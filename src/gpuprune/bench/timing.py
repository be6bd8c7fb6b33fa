"""Wall-clock timing with warm-up and repeats; medians and spread, never single runs."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# Early stop on a tight median: never before this many timed rounds. Up to about ten rounds the
# interval below is the sample's whole range, so stopping that early needs every round close.
MIN_CI_REPEATS = 6


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int
    ci_low_ms: float = math.nan  # distribution-free 95% confidence interval of the median
    ci_high_ms: float = math.nan


def median_ci(times: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median of ``times``.

    The order statistics of ranks ``(n - 1.96 sqrt(n)) / 2`` and ``1 + (n + 1.96 sqrt(n)) / 2``
    (the normal approximation of the binomial sign test), clamped to the sample; no assumption on
    the shape of the timing distribution, whose right tail (interrupts, a busy host) is long.
    """
    xs = sorted(times)
    n = len(xs)
    half = 1.96 * math.sqrt(n)
    lo = max(1, math.floor((n - half) / 2))
    hi = min(n, math.ceil(1 + (n + half) / 2))
    return xs[lo - 1], xs[hi - 1]


def tight(times: list[float], rel: float) -> bool:
    """Whether the median's 95% interval is within ``rel`` of the median on both sides (and at
    least :data:`MIN_CI_REPEATS` rounds were timed)."""
    if len(times) < MIN_CI_REPEATS:
        return False
    lo, hi = median_ci(times)
    med = statistics.median(times)
    return med - lo <= rel * med and hi - med <= rel * med


def measure(
    fn: Callable[[], object], *, warmup: int = 2, repeats: int = 7, budget_s: float = 2.0
) -> Timing:
    """Time ``fn()`` (which must block until its result is ready).

    Runs ``warmup`` untimed calls, then up to ``repeats`` timed ones, stopping early (after at least
    three) once ``budget_s`` seconds are spent, so slow configurations do not dominate a run.
    """
    return measure_many([fn], warmup=warmup, repeats=repeats, budget_s=budget_s)[0]


def measure_many(
    fns: list[Callable[[], object]],
    *,
    warmup: int = 2,
    repeats: int = 7,
    budget_s: float = 2.0,
    ci_rel: float | None = None,
    settle_s: float = 0.0,
    warm_s: float = 0.0,
) -> list[Timing]:
    """Time several calls in alternation (a, b, a, b, ...): paired draws, so a host that gets
    busier or quieter while they run shifts all of them alike and their ratio stays fair.

    Same warm-up, repeat and budget rules as :func:`measure` (the budget covers all of them).
    ``ci_rel``: also stop, after :data:`MIN_CI_REPEATS` rounds, once every call's median is
    known to within that fraction (its 95% interval, :func:`median_ci`); more rounds would
    not move it. Rounds stay whole, so the draws stay paired.
    ``warm_s`` > 0: before each timed call, call untimed until that long has passed (at least
    once), so the timed call runs back to back as in a serving loop or ``benchmark_app``: thread
    pools spin for a while after a call by default (OpenMP, ONNX Runtime, TBB), which keeps their
    threads awake, and the host's cores are awake too. ``settle_s``: idle that long after each
    timed call, so the spin has ended before the next path's turn and no path's pool takes the
    cores of the path timed after it. (The first call after an idle instead times the host
    waking its cores, which says nothing about the path.)
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
            _settle(settle_s)
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats:
        for fn, out in zip(fns, times, strict=True):
            _warm(fn, warm_s)
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
            _settle(settle_s)
        if len(times[0]) >= 3 and time.perf_counter() - start > budget_s:
            break
        if ci_rel is not None and all(tight(t, ci_rel) for t in times):
            break
    return [_summary(t) for t in times]


def _warm(fn: Callable[[], object], seconds: float) -> None:
    if seconds > 0:
        end = time.perf_counter() + seconds
        fn()
        while time.perf_counter() < end:
            fn()


def _settle(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _summary(times: list[float]) -> Timing:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(
        median_ms=statistics.median(times),
        p25_ms=q[0],
        p75_ms=q[2],
        min_ms=min(times),
        repeats=len(times),
        ci_low_ms=(ci := median_ci(times))[0],
        ci_high_ms=ci[1],
    )
