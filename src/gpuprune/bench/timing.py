"""Wall-clock timing with warm-up and repeats; medians and spread, never single runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int


def measure(
    fn: Callable[[], object], *, warmup: int = 2, repeats: int = 7, budget_s: float = 2.0
) -> Timing:
    """Time ``fn()`` (which must block until its result is ready).

    Runs ``warmup`` untimed calls, then up to ``repeats`` timed ones, stopping early (after at least
    three) once ``budget_s`` seconds are spent, so slow configurations do not dominate a run.
    """
    return measure_many([fn], warmup=warmup, repeats=repeats, budget_s=budget_s)[0]


def measure_many(
    fns: list[Callable[[], object]], *, warmup: int = 2, repeats: int = 7, budget_s: float = 2.0
) -> list[Timing]:
    """Time several calls in alternation (a, b, a, b, ...): paired draws, so a host that gets
    busier or quieter while they run shifts all of them alike and their ratio stays fair.

    Same warm-up, repeat and budget rules as :func:`measure` (the budget covers all of them).
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats:
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        if len(times[0]) >= 3 and time.perf_counter() - start > budget_s:
            break
    return [_summary(t) for t in times]


def _summary(times: list[float]) -> Timing:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(
        median_ms=statistics.median(times),
        p25_ms=q[0],
        p75_ms=q[2],
        min_ms=min(times),
        repeats=len(times),
    )
