"""LatencyCurve: monotone piecewise-linear interpolation, exact at measured points."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuprune.errors import UserError
from gpuprune.latency import LatencyCurve

kept_sets = st.lists(
    st.floats(0.01, 1.0, allow_nan=False), min_size=1, max_size=6, unique=True
).map(sorted)


@settings(max_examples=60, deadline=None)
@given(kept=kept_sets, data=st.data())
def test_monotone_everywhere(kept, data):
    ms = data.draw(st.lists(st.floats(0.0, 100.0), min_size=len(kept), max_size=len(kept)))
    curve = LatencyCurve(tuple(kept), tuple(ms))
    xs = [i / 50 for i in range(51)]
    ys = [curve(x) for x in xs]
    assert all(b >= a - 1e-9 for a, b in zip(ys, ys[1:], strict=False))
    assert min(ys) >= 0.0


@settings(max_examples=60, deadline=None)
@given(kept=kept_sets, data=st.data())
def test_exact_at_monotone_points(kept, data):
    steps = data.draw(st.lists(st.floats(0.0, 10.0), min_size=len(kept), max_size=len(kept)))
    ms, total = [], 0.0
    for s in steps:
        total += s
        ms.append(total)
    curve = LatencyCurve(tuple(kept), tuple(ms))
    for k, m in zip(kept, ms, strict=True):
        assert curve(k) == pytest.approx(m, rel=1e-9, abs=1e-12)


def test_interpolates_and_extrapolates():
    curve = LatencyCurve.from_points({0.25: 2.0, 0.5: 3.0, 1.0: 7.0})
    assert curve(0.75) == pytest.approx(5.0)
    assert curve(0.125) == pytest.approx(1.5)  # first segment's line
    assert curve(0.0) == pytest.approx(1.0)
    assert curve.dense_ms == pytest.approx(7.0)
    noisy = LatencyCurve.from_points({0.25: 4.0, 0.5: 3.0, 1.0: 7.0})
    assert noisy(0.5) == pytest.approx(4.0)  # a dip below a smaller kept fraction is noise


def test_round_trip_and_bad_points():
    curve = LatencyCurve.from_points({0.5: 1.0, 1.0: 2.0})
    assert LatencyCurve.from_dict(curve.to_dict()) == curve
    with pytest.raises(UserError):
        LatencyCurve((0.5, 0.5), (1.0, 2.0))
    with pytest.raises(UserError):
        LatencyCurve((0.0, 1.0), (1.0, 2.0))
