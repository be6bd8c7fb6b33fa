"""Early stop of paired timing on a tight median: the interval and the stopping rule, with fake
clocks (nothing here depends on the host's speed)."""

from __future__ import annotations

import statistics
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuprune.bench import timing
from gpuprune.bench.timing import MIN_CI_REPEATS, measure_many, median_ci, tight


@given(st.lists(st.floats(0.01, 1e3), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_median_interval_holds_the_median_and_lies_in_the_sample(times):
    lo, hi = median_ci(times)
    assert lo in times and hi in times
    assert lo <= statistics.median(times) <= hi


def test_interval_narrows_to_inner_order_statistics_with_more_rounds():
    xs = list(range(1, 101))  # ranks are values
    lo, hi = median_ci(xs)
    assert (lo, hi) == (40, 61)  # (100 - 19.6) / 2 -> 40; 1 + (100 + 19.6) / 2 -> 61
    assert median_ci([5.0, 1.0, 9.0]) == (1.0, 9.0)  # few rounds: the whole range


def test_tight_needs_enough_rounds_and_a_close_spread():
    assert not tight([10.0] * (MIN_CI_REPEATS - 1), 0.05)
    assert tight([10.0] * MIN_CI_REPEATS, 0.05)
    assert not tight([10.0] * (MIN_CI_REPEATS - 1) + [20.0], 0.05)  # one far round: keep going
    assert tight([10.0, 10.2, 9.9, 10.1, 10.0, 9.8], 0.05)


def _fake_clock(monkeypatch, durations):
    """perf_counter advances by the next duration on each timed call."""
    now = [0.0]
    seq = iter(durations)

    def fn():
        now[0] += next(seq)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    return fn


def test_steady_calls_stop_early_and_rounds_stay_paired(monkeypatch):
    fn = _fake_clock(monkeypatch, [0.010] * 1000)
    a, b = measure_many([fn, fn], warmup=0, repeats=50, budget_s=100.0, ci_rel=0.02)
    assert a.repeats == b.repeats == MIN_CI_REPEATS
    assert a.median_ms == pytest.approx(10.0)
    assert a.ci_low_ms == pytest.approx(10.0) and a.ci_high_ms == pytest.approx(10.0)


def test_noisy_calls_run_all_rounds_and_none_is_the_old_rule(monkeypatch):
    noisy = [0.010, 0.020] * 500
    fn = _fake_clock(monkeypatch, noisy)
    (t,) = measure_many([fn], warmup=0, repeats=20, budget_s=100.0, ci_rel=0.02)
    assert t.repeats == 20
    fn = _fake_clock(monkeypatch, [0.010] * 1000)
    (t,) = measure_many([fn], warmup=0, repeats=20, budget_s=100.0)  # no ci_rel: all rounds
    assert t.repeats == 20


def test_warm_calls_precede_each_timed_call_and_settle_idles_after():
    calls: list[tuple[str, float]] = []

    def path(name):
        return lambda: calls.append((name, time.perf_counter()))

    measure_many([path("a"), path("b")], warmup=0, repeats=3, budget_s=100.0,
                 warm_s=0.004, settle_s=0.01)  # fmt: skip
    names = [n for n, _ in calls]
    # every turn is a run of one path's calls: at least one untimed, then the timed one
    turns = [names[0]]
    for prev, cur in zip(names, names[1:], strict=False):
        if cur != prev:
            turns.append(cur)
    assert turns == ["a", "b"] * 3
    assert all(names.count(p) >= 2 * 3 for p in "ab")
    # the idle after a timed call: the next path starts settle_s later
    switches = [t1 - t0 for (n0, t0), (n1, t1) in zip(calls, calls[1:], strict=False) if n0 != n1]
    assert min(switches) >= 0.01
