"""The cpu kernel's narrow panels (a few output columns: batch 1's deep layers, a classifier at
batch 1) against the masked dense PyTorch result, on every build the host can run.

Which column counts are narrow depends on the build's vector width (at most 8 on AVX-512, 4 on
AVX2, 2 on SSE2/NEON), so every count from 1 to 9 is run on each: a count is checked either on
the narrow path or on the vector one, whatever the host.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_cpu import _has_compiler, _pooled_ref, assert_matches, block_masked  # same folder

from gpuprune.arch import get_target
from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for
from gpuprune.kernels.cpu import build

pytestmark = pytest.mark.skipif(not _has_compiler(), reason="no C compiler to build the kernel")

POCL = get_target("cpu-pocl")  # tile (32, 32), simd (4, 1)
NVIDIA = get_target("nvidia")  # tile (64, 32), simd (16, 1)
BLOCKS = [(POCL, "tile"), (POCL, "simd"), (NVIDIA, "tile"), (NVIDIA, "simd"), (POCL, "dense")]


def _host_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


# "" is the portable build; AVX2 only where the host runs it (its own SIMD level otherwise)
BUILDS = ["native", ""] + (["-mavx2 -mfma"] if _host_has("avx2") and _host_has("fma") else [])


@pytest.fixture(params=BUILDS, ids=lambda a: a or "portable")
def cpu(request, monkeypatch, tmp_path_factory):
    if request.param != "native":
        cache = tmp_path_factory.getbasetemp() / "narrow-builds"  # each build compiled once
        monkeypatch.setenv("GPUPRUNE_CACHE_DIR", str(cache))
        monkeypatch.setenv("GPUPRUNE_CPU_ARCH", request.param)
    build.load_library.cache_clear()
    try:
        backend = get_backend("cpu")
        backend.check_available()
        yield backend
    finally:
        build.load_library.cache_clear()


def _block(target, variant):
    return target.simd_block() if variant == "simd" else target.tile_block()


def _ragged_conv(cpu, block, seed, keep_k=None):
    """A 3x3 convolution of 5 -> 37 channels (M = 37, K = 45: ragged against every block), half
    its blocks pruned (and every K column from ``keep_k`` on), with a bias and a ReLU."""
    target, variant = block
    weight = block_masked(37, 5 * 9, _block(target, variant), 0.5, seed=seed)
    if keep_k is not None:
        weight[:, keep_k:] = 0
    bias = torch.randn(37)
    layer = cpu.conv2d(
        pack_for(weight, target, variant), bias, target, variant=variant,
        geometry=ConvGeometry(5, (3, 3), (1, 1), (1, 1)), relu=True,
    )  # fmt: skip
    return weight, bias, layer


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0].name}-{b[1]}")
def test_narrow_convolutions_match(cpu, block):
    """Batch 1, one output row of 1..9 pixels: M = 37 and K = 45 ragged against every block."""
    cin, cout = 5, 37
    weight, bias, layer = _ragged_conv(cpu, block, seed=3, keep_k=32)
    for cols in range(1, 10):
        x = torch.randn(1, cin, 1, cols)
        ref = F.conv2d(x, from_gemm(weight, (cout, cin, 3, 3)), bias, padding=1).relu()
        layer.count_visits, layer.visited_blocks = True, 0
        assert_matches(layer(x), ref)
        assert layer.visited_blocks == layer.nnzb * layer.panels(cols)
        layer.count_visits = False
        assert_matches(layer(x), ref)  # the cached tables, the one-call path


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0].name}-{b[1]}")
def test_narrow_pooled_convolutions_match(cpu, block):
    """One or two 2x2 pool windows (4 or 8 columns), floor and ceil mode."""
    target, variant = block
    cin, cout = 6, 70
    weight = block_masked(cout, cin * 9, _block(target, variant), 0.6, seed=5)
    for windows in (1, 2):
        for pool in ("floor", "ceil"):
            layer = cpu.conv2d(
                pack_for(weight, target, variant), None, target, variant=variant,
                geometry=ConvGeometry(cin, (3, 3), (1, 1), (1, 1)), relu=True, pool=pool,
            )  # fmt: skip
            x = torch.randn(1, cin, 2, 2 * windows - (pool == "ceil"))
            ref = _pooled_ref(x, weight, None, (3, 3), 1, 1, (1, 1), relu=True, pool=pool)
            for _ in range(2):
                assert_matches(layer(x), ref)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0].name}-{b[1]}")
def test_narrow_linear_matches(cpu, block):
    target, variant = block
    m, k = 37, 45
    weight = block_masked(m, k, _block(target, variant), 0.5, seed=7)
    bias = torch.randn(m)
    layer = cpu.linear(pack_for(weight, target, variant), bias, target, variant=variant)
    # 1-9 rows: narrow panels; 17-21, 33, 49: a vector or three and a tail of 1-5 rows
    for batch in [*range(1, 10), 17, 18, 19, 20, 21, 33, 49]:
        x = torch.randn(batch, k)
        assert_matches(layer(x), F.linear(x, weight, bias))


def test_padding_rows_are_zeros_not_leftovers(cpu):
    """Rows past K meet zero weights: the narrow map writes zeros there, so a NaN that an earlier
    call left in the scratch buffer cannot turn the result into NaN (0 * NaN is NaN)."""
    geometry = ConvGeometry(9, (3, 3), (1, 1), (1, 1))
    big = cpu.conv2d(pack_for(torch.randn(32, 81), POCL, "tile"), None, POCL, variant="tile",
                     geometry=geometry)  # fmt: skip
    big(torch.full((1, 9, 1, 3), float("nan")))  # fills the buffer's rows 0..80 with NaN
    weight = torch.randn(32, 45)  # K = 45: rows 45..63 of the 32-wide K blocks are padding
    small = cpu.conv2d(pack_for(weight, POCL, "tile"), None, POCL, variant="tile",
                       geometry=ConvGeometry(5, (3, 3), (1, 1), (1, 1)))  # fmt: skip
    x = torch.randn(1, 5, 1, 3)
    y = small(x)
    assert torch.isfinite(y).all()
    assert_matches(y, F.conv2d(x, from_gemm(weight, (32, 5, 3, 3)), None, padding=1))


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0].name}-{b[1]}")
def test_panel_tails_match(cpu, block):
    """A last panel whose last vector holds a few columns (ResNet's 7x7 at batch 1: 49 is three
    AVX-512 vectors and one column) takes those by row vectors on tiles. Every remainder up to
    a vector on every build: one output row of 9..40 pixels, then 7x7 images, batch 1 and 3.
    M = 37 leaves a partial last row-block."""
    cin, cout = 5, 37
    weight, bias, layer = _ragged_conv(cpu, block, seed=11)
    shapes = [(1, 1, cols) for cols in range(9, 41)] + [(1, 7, 7), (3, 7, 7), (2, 9, 11)]
    for b, h, w in shapes:
        x = torch.randn(b, cin, h, w)
        ref = F.conv2d(x, from_gemm(weight, (cout, cin, 3, 3)), bias, padding=1).relu()
        for _ in range(2):  # preparing call, then the cached tables
            assert_matches(layer(x), ref)
