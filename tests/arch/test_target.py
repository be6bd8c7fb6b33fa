"""Target validation, block shapes and the lane layout they come from."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpuprune.arch import TARGETS, Target, get_target
from gpuprune.errors import TargetError

BASE = dict(
    name="t",
    vendor="test",
    simd_width=32,
    max_work_group_size=1024,
    local_mem_bytes=48 * 1024,
    compute_units=8,
    mwg=64,
    nwg=64,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=4,
)

pow2 = st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128])
fields = st.fixed_dictionaries(
    {
        "name": st.just("h"),
        "vendor": st.just("x"),
        "simd_width": st.sampled_from([4, 8, 16, 32, 64]),
        "max_work_group_size": st.sampled_from([64, 128, 256, 1024]),
        "local_mem_bytes": st.sampled_from([4096, 16384, 65536]),
        "compute_units": st.integers(1, 128),
        "mwg": st.sampled_from([16, 24, 32, 48, 64, 96, 128]),
        "nwg": st.sampled_from([16, 32, 64, 128]),
        "kwg": st.sampled_from([1, 8, 16, 32, 64]),
        "mdimc": pow2,
        "ndimc": pow2,
        "vwm": st.sampled_from([1, 2, 3, 4, 8]),
        "vwn": st.sampled_from([1, 2, 4, 8]),
        "simd_k": st.sampled_from([1, 2, 3, 4]),
    }
)


def lane_rows(t: Target) -> list[set[int]]:
    """Rows each SIMD group touches, numbering work-items N-fastest as the kernels do."""
    groups: list[set[int]] = [set() for _ in range(t.simd_groups_per_work_group)]
    for lid in range(t.work_group_size):
        m_thread = lid // t.ndimc
        groups[lid // t.simd_width].update(range(m_thread * t.mwi, (m_thread + 1) * t.mwi))
    return groups


def test_presets_are_valid_and_cover_the_vendors():
    vendors = {get_target(n).vendor for n in TARGETS}
    assert {"nvidia", "amd", "intel", "arm", "qualcomm", "cpu"} <= vendors
    simd = {n: get_target(n).simd_width for n in TARGETS}
    assert simd["nvidia"] == 32 and simd["amd-gcn"] == 64 and simd["amd-rdna"] == 32
    assert {simd["intel"], simd["intel-simd8"]} == {16, 8}
    for name in TARGETS:
        assert get_target(name).source, f"preset {name} must say where its numbers come from"


def test_block_shapes_of_the_design_example():
    # 64x64 tile, 16x8 work-group, MWI 4, warp 32 -> R = (32/8)*4 = 16 (MISSION.md)
    t = Target(**BASE)
    assert t.tile_block() == (64, 32)
    assert t.simd_block() == (16, 1)
    assert t.row_groups_per_tile == 4
    assert t.replace(simd_k=4).simd_block() == (16, 4)


@pytest.mark.parametrize("name", list(TARGETS))
def test_simd_rows_match_the_simulated_lane_layout(name):
    t = get_target(name)
    for rows in lane_rows(t):
        assert len(rows) == t.simd_rows
        lo = min(rows)
        assert rows == set(range(lo, lo + t.simd_rows)), "a SIMD group covers contiguous rows"
        assert lo % t.simd_rows == 0, "row-groups are aligned R-row slices of the tile"


@settings(max_examples=300, deadline=None)
@given(fields)
@example({"name": "h", "vendor": "x", "simd_width": 4, "max_work_group_size": 64,
          "local_mem_bytes": 4096, "compute_units": 1, "mwg": 128, "nwg": 16, "kwg": 1,
          "mdimc": 128, "ndimc": 1, "vwm": 1, "vwn": 1, "simd_k": 1})  # mdimc alone too big
def test_valid_targets_satisfy_every_kernel_constraint(data):
    try:
        t = Target(**data)
    except TargetError as err:
        msg = str(err)
        assert "\n" not in msg
        m = re.search(r"a value that passes: (\w+)=(\d+)", msg)
        assert m, msg
        field, value = m.group(1), int(m.group(2))
        assert f"{field}=" in msg.split(";")[0], "the error names the field"
        # The suggested value fixes the constraint that failed (another may fail next).
        try:
            Target(**{**data, field: value})
        except TargetError as err2:
            assert str(err2).split(";")[0] != msg.split(";")[0]
        return
    assert t.mwg % (t.mdimc * t.vwm) == 0 and t.nwg % (t.ndimc * t.vwn) == 0
    assert t.work_group_size <= t.max_work_group_size
    assert t.work_group_size % t.simd_width == 0
    assert 4 * t.kwg * (t.mwg + t.nwg) <= t.local_mem_bytes
    assert (t.kwg * t.mwg) % t.work_group_size == 0 and (t.kwg * t.nwg) % t.work_group_size == 0
    assert t.kwg % t.simd_k == 0
    assert t.mwg % t.simd_rows == 0
    for rows in lane_rows(t):
        assert len(rows) == t.simd_rows


@pytest.mark.parametrize(
    "change, field",
    [
        ({"mwg": 60}, "mwg"),
        ({"nwg": 20}, "nwg"),
        ({"vwm": 3}, "vwm"),
        ({"mdimc": 64, "ndimc": 32, "mwg": 256}, "ndimc"),
        ({"simd_width": 64, "mdimc": 4, "mwg": 64, "ndimc": 8}, "ndimc"),
        ({"kwg": 256}, "kwg"),
        ({"simd_k": 3}, "simd_k"),
        ({"kwg": 0}, "kwg"),
        ({"mwg": "64"}, "mwg"),
    ],
)
def test_violations_name_field_constraint_and_a_passing_value(change, field):
    with pytest.raises(TargetError) as info:
        Target(**{**BASE, **change})
    msg = str(info.value)
    assert field in msg and "\n" not in msg


def test_target_is_frozen_and_hashable():
    t = get_target("nvidia")
    with pytest.raises(AttributeError):
        t.mwg = 32  # type: ignore[misc]
    assert hash(t) == hash(get_target("nvidia"))


def test_defines_carry_the_tiling():
    d = get_target("amd-gcn").defines()
    assert d["MWG"] == 64 and d["SIMD_WIDTH"] == 64 and d["SIMD_ROWS"] == 32
    assert d["MWI"] * d["MDIMC"] == d["MWG"]
