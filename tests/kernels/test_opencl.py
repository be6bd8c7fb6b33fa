"""OpenCL skip kernels on PoCL (or any OpenCL device): equivalence, real skipping, bad input.

Shapes are small and reused: a program is built once per (target, variant, instrumentation)
and serves every shape, so the builds dominate this file's runtime.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpuprune.arch import Target, get_target
from gpuprune.errors import DeviceNotFoundError, UserError
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import block_for, get_backend, pack_for
from gpuprune.kernels.testing import assert_close_rel, block_masked

pytestmark = pytest.mark.opencl
cl_context = pytest.importorskip("gpuprune.kernels.opencl.context")
from gpuprune.gemm import from_gemm  # noqa: E402
from gpuprune.kernels.opencl import OpenCLBackend, build_program, get_device  # noqa: E402
from gpuprune.kernels.opencl.programs import cache_size  # noqa: E402

POCL = get_target("cpu-pocl")

# batch, c_in, c_out, (h, w), kernel, stride, padding, dilation
CONV_CASES = [
    (1, 3, 5, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),  # batch 1, odd sizes, M < one tile
    (2, 7, 37, (11, 10), (3, 3), (2, 2), (1, 1), (1, 1)),  # stride 2, ragged M and K
    (2, 5, 40, (9, 9), (3, 2), (1, 2), (2, 0), (2, 1)),  # dilation, asymmetric everything
    (3, 64, 33, (5, 5), (1, 1), (1, 1), (0, 0), (1, 1)),  # 1x1 conv, K a multiple of KWG
]


def _conv_case(case, target, variant, seed, backend=None, density=0.5):
    batch, cin, cout, hw, ks, stride, pad, dil = case
    gen = torch.Generator().manual_seed(seed)
    w = block_masked(cout, cin * ks[0] * ks[1], block_for(target, variant), density, gen)
    b = torch.randn(cout, generator=gen)
    x = torch.randn(batch, cin, *hw, generator=gen)
    relu = seed % 2 == 0
    layer = (backend or get_backend("opencl")).conv2d(
        pack_for(w, target, variant), b, target, variant=variant,
        geometry=ConvGeometry(cin, ks, stride, pad, dil), relu=relu,
    )
    ref = F.conv2d(x, from_gemm(w, (cout, cin, *ks)), b, stride, pad, dil)
    return layer, x, F.relu(ref) if relu else ref, w


@pytest.mark.parametrize("variant", ["dense", "tile", "simd"])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_equals_masked_dense(variant, case):
    layer, x, ref, _ = _conv_case(CONV_CASES[case], POCL, variant, seed=case)
    assert_close_rel(layer(x), ref)


@settings(max_examples=15, deadline=None)
@given(
    variant=st.sampled_from(["tile", "simd"]),
    batch=st.integers(1, 3),
    cin=st.integers(1, 9),
    cout=st.integers(1, 70),
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    ks=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_random_conv_shapes(variant, batch, cin, cout, hw, ks, stride, pad, dil, density, seed):
    reach = [d * (k - 1) + 1 for d, k in zip(dil, ks, strict=True)]
    assume(all(h + 2 * p >= r for h, p, r in zip(hw, pad, reach, strict=True)))
    case = (batch, cin, cout, hw, ks, stride, pad, dil)
    layer, x, ref, _ = _conv_case(case, POCL, variant, seed=seed, density=density)
    assert_close_rel(layer(x), ref)


@pytest.mark.parametrize("variant", ["dense", "tile", "simd"])
def test_linear_equals_masked_dense(variant):
    gen = torch.Generator().manual_seed(7)
    w = block_masked(45, 70, block_for(POCL, variant), 0.5, gen)
    b = torch.randn(45, generator=gen)
    x = torch.randn(3, 70, generator=gen)
    layer = get_backend("opencl").linear(pack_for(w, POCL, variant), b, POCL, variant=variant)
    assert_close_rel(layer(x), x @ w.T + b)


OTHER_TARGETS = {
    "nvidia": get_target("nvidia"),  # 64x64 tile, NWI 8, R 16
    "mali": get_target("mali"),  # 8x16 work-group, R 4
    "pocl-k4": POCL.replace(name="pocl-k4", simd_k=4),  # SIMD vectors 4 deep in k
}


@pytest.mark.parametrize("target_name", list(OTHER_TARGETS))
@pytest.mark.parametrize("variant", ["tile", "simd"])
def test_other_targets_tile_parameters(target_name, variant):
    """Other tile shapes (wider vectors, other R, deeper SIMD vectors) on any OpenCL device."""
    layer, x, ref, _ = _conv_case(CONV_CASES[1], OTHER_TARGETS[target_name], variant, seed=3)
    assert_close_rel(layer(x), ref)


@pytest.mark.parametrize("variant", ["dense", "tile", "simd"])
def test_kernel_visits_exactly_the_kept_blocks(variant):
    """The instrumented kernel counts the blocks each row-block visits."""
    layer, x, ref, w = _conv_case(
        CONV_CASES[1], POCL, variant, seed=4, backend=OpenCLBackend(instrument=True), density=0.3
    )
    assert_close_rel(layer(x), ref)  # counting does not change the result
    counts = layer.counts  # [row-blocks, n-tiles]
    packed = pack_for(w, POCL, variant)
    if variant == "dense":
        expected = torch.full((packed.grid[0],), packed.grid[1])
    else:
        expected = torch.zeros(counts.shape[0], dtype=torch.long)
        expected[: packed.grid[0]] = packed.kept_per_row_block()
    assert torch.equal(counts.long(), expected[:, None].expand_as(counts))
    if variant != "dense":
        assert counts[:, 0].sum() == packed.nnzb < packed.grid[0] * packed.grid[1]


def test_pruned_for_one_target_runs_on_another():
    """A model pruned with nvidia's 64x32 tiles, compiled for cpu-pocl, gives the same output."""
    case = CONV_CASES[1]
    nvidia = get_target("nvidia")
    layer_x, x, ref, w = _conv_case(case, nvidia, "tile", seed=5)
    out_x = layer_x(x)
    _, cin, cout, _, ks, stride, pad, dil = case
    for variant in ("tile", "simd"):
        packed = pack_for(w, POCL, variant)
        assert packed.skippable_fraction() >= pack_for(w, nvidia, "tile").skippable_fraction()
        layer_y = get_backend("opencl").conv2d(
            packed, None, POCL, variant=variant, geometry=ConvGeometry(cin, ks, stride, pad, dil),
        )
        # no bias/relu here: compare against the bias-free reference
        plain = F.conv2d(x, from_gemm(w, (cout, cin, *ks)), None, stride, pad, dil)
        assert_close_rel(layer_y(x), plain)
    assert_close_rel(out_x, ref)


def test_programs_are_cached():
    dev = get_device()
    defines = {**POCL.defines(), "VARIANT": 1, "COUNT": 0}
    first = build_program(dev, defines)
    size = cache_size()
    assert build_program(dev, dict(defines)) is first and cache_size() == size


def test_no_platform_names_the_setup_step(monkeypatch):
    monkeypatch.setattr(cl_context, "_all_devices", lambda cl: [])
    with pytest.raises(DeviceNotFoundError, match="make setup") as err:
        cl_context._device.__wrapped__(None)
    assert "\n" not in str(err.value)


def test_missing_pyopencl_names_the_install_step(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)
    with pytest.raises(UserError, match="pyopencl is not installed.*make setup"):
        cl_context.import_pyopencl()


def test_unknown_device_choice():
    with pytest.raises(DeviceNotFoundError, match="matches no OpenCL device"):
        cl_context._device.__wrapped__("no-such-gpu")


def test_target_too_big_for_the_device():
    huge = Target(
        name="huge", vendor="x", simd_width=8, max_work_group_size=4096,
        local_mem_bytes=64 << 20, compute_units=1, mwg=1024, nwg=1024, kwg=1024,
        mdimc=16, ndimc=16,
    )
    w = torch.randn(8, 27)
    with pytest.raises(UserError, match="compile for a target that fits"):
        get_backend("opencl").linear(pack_for(w, huge, "tile"), None, huge, variant="tile")


def test_bad_layer_inputs():
    layer, x, _, _ = _conv_case(CONV_CASES[0], POCL, "tile", seed=0)
    with pytest.raises(UserError, match="float32"):
        layer(x.double())
    with pytest.raises(UserError, match="channels"):
        layer(x[:, :2])
    narrow, _, _, _ = _conv_case(CONV_CASES[2], POCL, "tile", seed=0)  # 3x2 kernel, no w padding
    with pytest.raises(UserError, match="smaller than"):
        narrow(torch.zeros(1, 5, 9, 1))


def _half_ref(layer_ref_args, x, w, b, relu):
    """float64 reference from the float16-rounded input and weight."""
    stride, pad, dil, shape = layer_ref_args
    ref = F.conv2d(x.half().double(), from_gemm(w.half().double(), shape), b.double(), stride, pad,
                   dil)  # fmt: skip
    return F.relu(ref) if relu else ref


@pytest.mark.parametrize("variant", ["dense", "tile", "simd"])
@pytest.mark.parametrize("case", [1, 2])
def test_half_storage_path(variant, case):
    """float16 in and out (HALF=1 build), float32 accumulation: works without cl_khr_fp16."""
    layer, x, _, w = _conv_case(CONV_CASES[case], POCL, variant, seed=case)
    batch, cin, cout, hw, ks, stride, pad, dil = CONV_CASES[case]
    y = layer(x.half())
    assert y.dtype == torch.float16
    b = torch.from_numpy(layer.bias)
    ref = _half_ref((stride, pad, dil, (cout, cin, *ks)), x, w, b, layer.relu)
    assert_close_rel(y.double(), ref, rel=2e-3)
    assert_close_rel(layer(x).double(), ref, rel=2e-3)  # the float32 build still serves float32


def test_half_linear_and_compile():
    from torch import nn

    from gpuprune import compile as gp_compile

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(70, 40), nn.ReLU(), nn.Linear(40, 5)).half()
    with torch.no_grad():
        model[0].weight[:32, :32] = 0
    compiled = gp_compile(model, POCL, backend="opencl", methods="tile", verbose=False)
    x = torch.randn(3, 70).half()
    y = compiled(x)
    assert y.dtype == torch.float16
    with torch.no_grad():
        ref = model.double()(x.double())
    assert_close_rel(y.double(), ref, rel=2e-3)
    with pytest.raises(UserError, match="opencl backend's kernels run float32, float16"):
        gp_compile(nn.Linear(4, 4).bfloat16(), POCL, backend="opencl", verbose=False)
