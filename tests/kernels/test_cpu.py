"""The cpu backend's compiled kernel against the masked dense PyTorch result."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import expand_blocks, from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for
from gpuprune.kernels.cpu import build


def _has_compiler() -> bool:
    try:
        build.find_compiler()
    except UserError:
        return False
    return True


# the kernel is built on first use; without a C compiler only the error path can be tested
pytestmark = pytest.mark.skipif(not _has_compiler(), reason="no C compiler to build the kernel")

POCL = get_target("cpu-pocl")  # tile (32, 32), simd (4, 1)
NVIDIA = get_target("nvidia")  # tile (64, 32), simd (16, 1)


@pytest.fixture(scope="module")
def cpu():
    backend = get_backend("cpu")
    backend.check_available()
    return backend


def block_masked(m: int, k: int, block: tuple[int, int], density: float, seed: int):
    """A random [m, k] weight zeroed in whole blocks, with row-block 0 fully pruned and
    row-block 1 (if any) fully kept."""
    g = torch.Generator().manual_seed(seed)
    gm, gk = -(-m // block[0]), -(-k // block[1])
    keep = torch.rand(gm, gk, generator=g) < density
    keep[0] = False
    if gm > 1:
        keep[1] = True
    mask = expand_blocks(keep, block, (m, k))
    return torch.randn(m, k, generator=g) * mask


def assert_matches(y, ref):
    scale = ref.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * float(scale))


CONV_CASES = [
    # batch, c_in, h, w, c_out, kernel, stride, padding, dilation
    (1, 3, 9, 7, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 13, 17, 11, 37, (3, 3), (2, 2), (1, 1), (1, 1)),
    (3, 7, 10, 12, 70, (3, 2), (1, 2), (2, 0), (2, 1)),
    (1, 40, 6, 6, 33, (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 9, 13, 13, 65, (5, 5), (2, 1), (2, 3), (1, 2)),
    # wide outputs (>= 16 columns): im2col copies runs instead of gathering
    (2, 4, 9, 40, 9, (3, 3), (1, 2), (1, 1), (1, 1)),
    (1, 3, 6, 37, 40, (3, 3), (1, 1), (2, 2), (2, 2)),
]


@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("target", [POCL, NVIDIA], ids=lambda t: t.name)
def test_conv_matches_masked_dense(cpu, target, case, variant):
    b, cin, h, w, cout, ks, stride, pad, dil = case
    k = cin * ks[0] * ks[1]
    block = target.simd_block() if variant == "simd" else target.tile_block()
    weight = block_masked(cout, k, block, 0.4, seed=cout * k)
    bias = torch.randn(cout)
    packed = pack_for(weight, target, variant)
    layer = cpu.conv2d(
        packed, bias, target, variant=variant,
        geometry=ConvGeometry(cin, ks, stride, pad, dil), relu=True,
    )  # fmt: skip
    x = torch.randn(b, cin, h, w)
    ref = F.conv2d(x, from_gemm(weight, (cout, cin, *ks)), bias, stride, pad, dil).relu()
    layer.count_visits = True
    y = layer(x)
    assert y.shape == ref.shape and y.is_contiguous()
    assert_matches(y, ref)
    # the kernel walked exactly the kept blocks of every row-block, once per N-panel
    kept = packed.nnzb if variant != "dense" else layer.nnzb
    assert layer.visited_blocks == kept * layer.panels(b * ref.shape[2] * ref.shape[3])


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), cin=st.integers(1, 12), cout=st.integers(1, 50),
    h=st.integers(3, 12), w=st.integers(3, 40), kh=st.integers(1, 3), kw=st.integers(1, 3),
    stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
    density=st.floats(0.0, 1.0), simd=st.booleans(), relu=st.booleans(),
)  # fmt: skip
def test_conv_random_shapes(b, cin, cout, h, w, kh, kw, stride, pad, dil, density, simd, relu):
    """Both im2col paths (gather for narrow, runs for wide outputs) on random shapes."""
    if h + 2 * pad < dil * (kh - 1) + 1 or w + 2 * pad < dil * (kw - 1) + 1:
        return  # no output pixel
    variant = "simd" if simd else "tile"
    block = POCL.simd_block() if simd else POCL.tile_block()
    weight = block_masked(cout, cin * kh * kw, block, density, seed=b + 7 * cin + 31 * cout)
    layer = get_backend("cpu").conv2d(
        pack_for(weight, POCL, variant), None, POCL, variant=variant,
        geometry=ConvGeometry(cin, (kh, kw), (stride, stride), (pad, pad), (dil, dil)), relu=relu,
    )  # fmt: skip
    x = torch.randn(b, cin, h, w)
    ref = F.conv2d(x, from_gemm(weight, (cout, cin, kh, kw)), None, stride, pad, dil)
    assert_matches(layer(x), ref.relu() if relu else ref)


@pytest.mark.parametrize("batch", [1, 7, 70])
@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
def test_linear_matches_masked_dense(cpu, batch, variant):
    m, k = 45, 100
    block = POCL.simd_block() if variant == "simd" else POCL.tile_block()
    weight = block_masked(m, k, block, 0.5, seed=batch)
    bias = torch.randn(m)
    packed = pack_for(weight, POCL, variant)
    layer = cpu.linear(packed, bias, POCL, variant=variant)
    x = torch.randn(batch, k)
    layer.count_visits = True
    assert_matches(layer(x), F.linear(x, weight, bias))
    kept = packed.nnzb if variant != "dense" else layer.nnzb
    assert layer.visited_blocks == kept * layer.panels(batch)


def test_pruned_for_one_target_runs_on_another(cpu):
    """A mask made of NVIDIA's 64x32 tiles, compiled with cpu-pocl's 32x32 tiles and 4x1
    vectors: the same output, and the zero NVIDIA tiles are still skipped."""
    weight = block_masked(130, 16 * 9, NVIDIA.tile_block(), 0.4, seed=9)
    x = torch.randn(2, 16, 7, 7)
    ref = F.conv2d(x, from_gemm(weight, (130, 16, 3, 3)), None, 1, 1)
    for target, variant in ((NVIDIA, "tile"), (POCL, "tile"), (POCL, "simd")):
        packed = pack_for(weight, target, variant)
        assert packed.skippable_fraction() > 0.3
        layer = cpu.conv2d(
            packed, None, target, variant=variant,
            geometry=ConvGeometry(16, (3, 3), (1, 1), (1, 1), (1, 1)),
        )  # fmt: skip
        assert_matches(layer(x), ref)


def test_tile_walks_fewer_blocks_than_dense(cpu):
    weight = block_masked(96, 288, POCL.tile_block(), 0.25, seed=3)
    packed = pack_for(weight, POCL, "tile")
    layers = {
        v: cpu.conv2d(
            packed, None, POCL, variant=v,
            geometry=ConvGeometry(32, (3, 3), (1, 1), (1, 1), (1, 1)),
        )  # fmt: skip
        for v in ("tile", "dense")
    }
    x = torch.randn(1, 32, 8, 8)
    for layer in layers.values():
        layer.count_visits = True
        layer(x)
    # the kernel walks each block once per N-panel; the panel width follows the host's SIMD width
    panels = layers["tile"].panels(8 * 8)
    assert layers["dense"].panels(8 * 8) == panels
    assert layers["dense"].visited_blocks == 3 * 9 * panels  # every block of the 3 x 9 grid
    assert layers["tile"].visited_blocks == packed.nnzb * panels
    assert packed.nnzb < 27


@pytest.mark.parametrize("side", [5, 18])
def test_im2col_skips_k_blocks_no_row_keeps(cpu, side):
    """Channels pruned in every row leave whole K blocks unused; im2col leaves their rows
    unwritten (stale from the previous call), which is right only if no kept block reads them."""
    weight = block_masked(70, 12 * 9, POCL.tile_block(), 0.7, seed=side)
    weight[:, 32:96] = 0  # K blocks 1 and 2 pruned in every row-block
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), None, POCL, variant="tile",
        geometry=ConvGeometry(12, (3, 3), (1, 1), (1, 1), (1, 1)),
    )  # fmt: skip
    assert layer.used.tolist()[1:3] == [0, 0] and layer.used.sum() >= 1
    for mode in (1, 2):
        layer.mode = mode
        for seed in range(2):  # the second call finds the first call's rows in the buffers
            x = torch.randn(2, 12, side, side, generator=torch.Generator().manual_seed(seed))
            assert_matches(layer(x), F.conv2d(x, from_gemm(weight, (70, 12, 3, 3)), None, 1, 1))


def test_empty_batch(cpu):
    packed = pack_for(torch.randn(4, 27), POCL, "tile")
    conv = cpu.conv2d(packed, None, POCL, variant="tile",
                             geometry=ConvGeometry(3, (3, 3), (1, 1), (1, 1), (1, 1)))  # fmt: skip
    assert conv(torch.randn(0, 3, 5, 5)).shape == (0, 4, 5, 5)
    assert cpu.linear(packed, None, POCL, variant="tile")(torch.randn(0, 27)).shape == (0, 4)


def test_fully_pruned_layer_gives_bias(cpu):
    packed = pack_for(torch.zeros(20, 30), POCL, "tile")
    bias = torch.randn(20)
    layer = cpu.linear(packed, bias, POCL, variant="tile", relu=True)
    layer.count_visits = True
    y = layer(torch.randn(4, 30))
    assert layer.visited_blocks == 0
    assert torch.equal(y, bias.relu().expand(4, 20))


@pytest.mark.parametrize("side", [6, 20])  # narrow: gathered im2col, wide: copied runs
def test_fused_and_two_phase_schedules_agree(cpu, side):
    weight = block_masked(40, 7 * 9, POCL.tile_block(), 0.5, seed=side)
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), torch.randn(40), POCL, variant="tile",
        geometry=ConvGeometry(7, (3, 3), (1, 1), (1, 1), (1, 1)), relu=True,
    )  # fmt: skip
    x = torch.randn(3, 7, side, side)
    outs = []
    for mode in (1, 2):  # 1: im2col per panel inside each thread, 2: whole buffer first
        layer.mode = mode
        layer.count_visits, layer.visited_blocks = True, 0
        outs.append(layer(x))
        assert layer.visited_blocks == layer.nnzb * layer.panels(3 * side * side)
    assert torch.equal(outs[0], outs[1])
    ref = F.conv2d(x, from_gemm(weight, (40, 7, 3, 3)), layer.bias, padding=1).relu()
    assert_matches(outs[0], ref)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("variant", ["tile", "simd"])
@pytest.mark.parametrize("side", [3, 7, 14, 23])  # a lone partial panel, up to several + a tail
def test_one_image_schedules_agree(cpu, side, variant, threads):
    """At batch 1 fused panels go to the threads as contiguous shares of the image (mode 1), and
    with few panels each thread runs its own run of (panel, row-block) tasks, weighed by kept
    blocks, the panel at a seam split by row-blocks (mode 3). Row-blocks that keep nothing or
    much, a seam inside a lone panel, more threads than row-blocks: every task runs exactly once
    (the visit count), bitwise as the whole-buffer schedule."""
    block = POCL.simd_block() if variant == "simd" else POCL.tile_block()
    weight = block_masked(70, 9 * 9, block, 0.5, seed=side)
    weight[: block[0]] = 0  # a first row-block that keeps nothing: a share of no weight
    weight[-6:] = torch.randn(6, 81)  # a last, ragged row-block that keeps everything
    layer = cpu.conv2d(
        pack_for(weight, POCL, variant), torch.randn(70), POCL, variant=variant,
        geometry=ConvGeometry(9, (3, 3), (1, 1), (1, 1)), relu=True,
    )  # fmt: skip
    x = torch.randn(1, 9, side, side)
    ref = F.conv2d(x, from_gemm(weight, (70, 9, 3, 3)), layer.bias, padding=1).relu()
    outs, before = {}, torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for mode in (1, 2, 3):
            layer.mode = mode
            layer.count_visits, layer.visited_blocks = True, 0
            outs[mode] = layer(x)
            assert layer.visited_blocks == layer.nnzb * layer.panels(side * side), mode
    finally:
        torch.set_num_threads(before)
    assert_matches(outs[2], ref)
    assert torch.equal(outs[1], outs[2]) and torch.equal(outs[3], outs[2])


def test_portable_build_matches(monkeypatch, tmp_path):
    """The build without -march=native (SSE2/NEON vector width, other micro-tile) agrees too."""
    monkeypatch.setenv("GPUPRUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPUPRUNE_CPU_ARCH", "")
    build.load_library.cache_clear()
    try:
        backend = get_backend("cpu")
        for variant in ("tile", "simd"):
            weight = block_masked(37, 5 * 9, POCL.simd_block() if variant == "simd" else
                                  POCL.tile_block(), 0.5, seed=4)  # fmt: skip
            layer = backend.conv2d(
                pack_for(weight, POCL, variant), None, POCL, variant=variant,
                geometry=ConvGeometry(5, (3, 3), (2, 1), (1, 1), (1, 1)),
            )  # fmt: skip
            x = torch.randn(2, 5, 11, 19)
            ref = F.conv2d(x, from_gemm(weight, (37, 5, 3, 3)), None, (2, 1), 1)
            assert_matches(layer(x), ref)
    finally:
        build.load_library.cache_clear()


def test_thread_count_does_not_change_result(cpu):
    weight = block_masked(64, 144, POCL.tile_block(), 0.5, seed=1)
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), None, POCL, variant="tile",
        geometry=ConvGeometry(16, (3, 3), (1, 1), (1, 1), (1, 1)),
    )  # fmt: skip
    x = torch.randn(2, 16, 10, 10)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        two = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_bad_input_is_user_error(cpu):
    weight = block_masked(8, 27, POCL.tile_block(), 1.0, seed=0)
    packed = pack_for(weight, POCL, "tile")
    layer = cpu.conv2d(packed, None, POCL, variant="tile", geometry=ConvGeometry(3, (3, 3)))
    with pytest.raises(UserError, match="float32"):
        layer(torch.randn(1, 3, 5, 5, dtype=torch.float64))
    with pytest.raises(UserError, match="channels"):
        layer(torch.randn(1, 4, 5, 5))
    with pytest.raises(UserError, match="x.cpu()"):
        layer(torch.randn(1, 3, 5, 5, device="meta"))
    with pytest.raises(UserError, match="smaller than"):
        layer(torch.randn(1, 3, 2, 2))
    with pytest.raises(UserError, match="K=27"):
        cpu.conv2d(packed, None, POCL, variant="tile", geometry=ConvGeometry(4, (3, 3)))
    with pytest.raises(UserError, match="pack_for"):
        cpu.linear(packed, None, POCL, variant="simd")


def test_missing_compiler_is_user_error(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(UserError, match="C compiler"):
        build.find_compiler()


def test_build_goes_to_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUPRUNE_CACHE_DIR", str(tmp_path))
    lib = build.load_library.__wrapped__()
    assert lib.gp_panel_width() % 4 == 0
    built = list((tmp_path / "cpu").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temp files left behind


def test_layer_survives_deepcopy(cpu):
    weight = block_masked(10, 12, POCL.tile_block(), 1.0, seed=0)
    layer = cpu.linear(pack_for(weight, POCL, "tile"), None, POCL, variant="tile")
    x = torch.randn(2, 12)
    assert torch.equal(copy.deepcopy(layer)(x), layer(x))


def test_repeated_calls_take_the_fast_path_and_stay_exact(cpu):
    """After the first call of an input shape the layer skips its Python checks; a new shape,
    a strided input or a bad one still goes through them."""
    weight = block_masked(40, 5 * 9, POCL.tile_block(), 0.5, seed=11)
    bias = torch.randn(40)
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), bias, POCL, variant="tile",
        geometry=ConvGeometry(5, (3, 3), (2, 1), (1, 1), (1, 1)), relu=True,
    )  # fmt: skip

    def want(x):
        return F.relu(F.conv2d(x, from_gemm(weight, (40, 5, 3, 3)), bias, (2, 1), (1, 1)))

    x = torch.randn(2, 5, 9, 7)
    first = layer(x)
    assert x.shape in layer._shapes
    torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first, want(x), rtol=1e-4, atol=1e-4)
    strided = torch.randn(2, 5, 7, 9).transpose(2, 3)  # same shape, not contiguous
    torch.testing.assert_close(layer(strided), want(strided), rtol=1e-4, atol=1e-4)
    other = torch.randn(3, 5, 6, 6)
    torch.testing.assert_close(layer(other), want(other), rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="float32"):
        layer(x.double())


def _pooled_ref(x, weight, bias, ks, stride, pad, dil, relu, pool="floor"):
    y = F.conv2d(x, from_gemm(weight, (weight.shape[0], x.shape[1], *ks)), bias, stride, pad, dil)
    return F.max_pool2d(y.relu() if relu else y, 2, ceil_mode=pool == "ceil")


# batch, c_in, h, w, c_out, kernel, stride, padding: odd and even conv outputs, narrow (gathered)
# and wide (copied runs) rows, a window row split across panels
POOL_CASES = [
    (1, 3, 9, 7, 5, (3, 3), (1, 1), (1, 1)),
    (2, 13, 17, 11, 37, (3, 3), (1, 1), (1, 1)),
    (3, 7, 10, 35, 70, (3, 2), (1, 2), (2, 0)),
    (1, 40, 6, 6, 33, (1, 1), (1, 1), (0, 0)),
    (2, 4, 19, 40, 9, (3, 3), (1, 1), (1, 1)),
    (2, 5, 33, 33, 20, (3, 3), (2, 1), (1, 1)),
]


@pytest.mark.parametrize("pool", ["floor", "ceil"])
@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("variant", ["tile", "simd"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv_with_fused_max_pool_matches(cpu, case, variant, mode, pool):
    """conv + bias + ReLU + 2x2 stride-2 max pool (floor or ceil mode) in one kernel call."""
    b, cin, h, w, cout, ks, stride, pad = case
    block = POCL.simd_block() if variant == "simd" else POCL.tile_block()
    weight = block_masked(cout, cin * ks[0] * ks[1], block, 0.4, seed=cout + cin)
    bias = torch.randn(cout)
    layer = cpu.conv2d(
        pack_for(weight, POCL, variant), bias, POCL, variant=variant,
        geometry=ConvGeometry(cin, ks, stride, pad), relu=True, pool=pool,
    )  # fmt: skip
    layer.mode = mode
    x = torch.randn(b, cin, h, w)
    ref = _pooled_ref(x, weight, bias, ks, stride, pad, (1, 1), relu=True, pool=pool)
    layer.count_visits = True
    y = layer(x)
    assert y.shape == ref.shape and y.is_contiguous()
    assert_matches(y, ref)
    # the kernel computes only the conv pixels some window reads: 4 columns per window
    assert layer.visited_blocks == layer.nnzb * layer.panels(4 * ref[:, 0].numel())
    layer.count_visits = False
    assert torch.equal(layer(x), y)  # the cached fast path gives the same bits


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), cin=st.integers(1, 9), cout=st.integers(1, 40),
    h=st.integers(2, 14), w=st.integers(2, 40), kh=st.integers(1, 3), kw=st.integers(1, 3),
    stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
    density=st.floats(0.0, 1.0), simd=st.booleans(), relu=st.booleans(), bias=st.booleans(),
    ceil=st.booleans(),
)  # fmt: skip
def test_conv_with_pool_random_shapes(b, cin, cout, h, w, kh, kw, stride, pad, dil, density, simd,
                                      relu, bias, ceil):  # fmt: skip
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    if oh < 1 or ow < 1 or (not ceil and (oh < 2 or ow < 2)):
        return  # no pooled pixel (refused: test_pool_needs_two_conv_pixels)
    pool = "ceil" if ceil else "floor"
    variant = "simd" if simd else "tile"
    block = POCL.simd_block() if simd else POCL.tile_block()
    weight = block_masked(cout, cin * kh * kw, block, density, seed=b + 7 * cin + 31 * cout)
    bias_t = torch.randn(cout) if bias else None
    layer = get_backend("cpu").conv2d(
        pack_for(weight, POCL, variant), bias_t, POCL, variant=variant,
        geometry=ConvGeometry(cin, (kh, kw), (stride, stride), (pad, pad), (dil, dil)),
        relu=relu, pool=pool,
    )  # fmt: skip
    x = torch.randn(b, cin, h, w)
    ref = _pooled_ref(x, weight, bias_t, (kh, kw), stride, pad, dil, relu, pool)
    assert_matches(layer(x), ref)
    assert_matches(layer(x), ref)  # second call: cached arguments and tap tables


def test_pool_needs_two_conv_pixels(cpu):
    layer = cpu.conv2d(
        pack_for(torch.randn(4, 27), POCL, "tile"), None, POCL, variant="tile",
        geometry=ConvGeometry(3, (3, 3)), pool="floor",
    )  # fmt: skip
    with pytest.raises(UserError, match="max pool"):
        layer(torch.randn(1, 3, 3, 9))


@pytest.mark.parametrize("pool", [None, "floor", "ceil"])
@pytest.mark.parametrize("side", [7, 20])
def test_cached_tap_tables_repeat_over_the_batch(cpu, pool, side):
    """Tap tables are kept for one period of panels (whole images) and the partial last panel;
    a batch of 70 images covers several periods and ends mid-panel for any panel width, and
    every image must still read its own pixels."""
    weight = block_masked(12, 3 * 9, POCL.tile_block(), 1.0, seed=side)
    bias = torch.randn(12)
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), bias, POCL, variant="tile",
        geometry=ConvGeometry(3, (3, 3), (1, 1), (1, 1)), pool=pool,
    )  # fmt: skip
    x = torch.randn(70, 3, side, side)
    first = layer(x)  # tables built inside the call
    _, args, _ = layer._shapes[x.shape]
    windows = first[0, 0].numel()  # 4 columns per pool window, 1 per pixel without a pool
    cols = 70 * windows * (4 if pool else 1)
    assert layer.lib.gp_conv_tables_kept(args.data_ptr()) < layer.panels(cols)
    second = layer(x)  # the cached tables
    assert torch.equal(first, second)
    y = F.conv2d(x, from_gemm(weight, (12, 3, 3, 3)), bias, 1, 1)
    assert_matches(second, F.max_pool2d(y, 2, ceil_mode=pool == "ceil") if pool else y)


def test_channels_last_input_with_pool(cpu):
    weight = block_masked(20, 6 * 9, POCL.tile_block(), 0.6, seed=2)
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), None, POCL, variant="tile",
        geometry=ConvGeometry(6, (3, 3), (1, 1), (1, 1)), relu=True, pool="ceil",
    )  # fmt: skip
    x = torch.randn(2, 6, 11, 13).to(memory_format=torch.channels_last)
    ref = _pooled_ref(x.contiguous(), weight, None, (3, 3), 1, 1, (1, 1), relu=True, pool="ceil")
    for _ in range(2):
        assert_matches(layer(x), ref)


@pytest.mark.parametrize("threads", [2, 3])
def test_lone_panel_rows_split_between_threads(cpu, threads):
    """With fewer panels than threads the im2col of a panel is split by rows: splits that start
    mid-channel and mid-block, K blocks no row keeps, and a ragged last block."""
    weight = block_masked(40, 11 * 9, POCL.tile_block(), 0.6, seed=threads)
    weight[:, 32:64] = 0  # K block 1 pruned in every row-block
    layer = cpu.conv2d(
        pack_for(weight, POCL, "tile"), torch.randn(40), POCL, variant="tile",
        geometry=ConvGeometry(11, (3, 3), (1, 1), (1, 1)), relu=True,
    )  # fmt: skip
    x = torch.randn(1, 11, 2, 3)  # 6 output columns: one panel for any SIMD width
    ref = F.conv2d(x, from_gemm(weight, (40, 11, 3, 3)), layer.bias, padding=1).relu()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for mode in (0, 2):
            layer.mode = mode
            assert_matches(layer(x), ref)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("windows", [1, 2, 3, 5, 8, 15, 17])
@pytest.mark.parametrize("batch", [1, 3, 37])
@pytest.mark.parametrize("variant", ["tile", "simd"])
def test_pooled_last_panel_packs_its_windows(cpu, windows, batch, variant):
    # one row of `windows` pool windows per image: the last panel holds from 1 window to a full
    # panel's worth, packed (bottom pairs right after the top ones); with 37 images the panels
    # also repeat with a period and a partial tail of their own
    cin, cout = 5, 37
    block = POCL.simd_block() if variant == "simd" else POCL.tile_block()
    weight = block_masked(cout, cin * 9, block, 0.6, seed=windows + batch)
    bias = torch.randn(cout)
    layer = get_backend("cpu").conv2d(
        pack_for(weight, POCL, variant), bias, POCL, variant=variant,
        geometry=ConvGeometry(cin, (3, 3), (1, 1), (1, 1)), relu=True, pool="ceil",
    )  # fmt: skip
    x = torch.randn(batch, cin, 2, 2 * windows - (windows % 2))  # odd width: ceil mode's edge
    ref = _pooled_ref(x, weight, bias, (3, 3), 1, 1, (1, 1), relu=True, pool="ceil")
    assert_matches(layer(x), ref)
    assert_matches(layer(x), ref)  # the cached tables
