"""The triton backend's gathered-K kernel against the masked dense PyTorch result.

Runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``), so shapes stay tiny; the test marked
``gpu`` runs the compiled kernel on a real CUDA/ROCm device when there is one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import block_reduce, expand_blocks
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for

pytest.importorskip("triton")
pytestmark = pytest.mark.triton

POCL = get_target("cpu-pocl")  # tile (32, 32), simd (4, 1)
NVIDIA = get_target("nvidia")  # tile (64, 32), simd (16, 1)


@pytest.fixture()
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return get_backend("triton")


def block_masked(m: int, k: int, block: tuple[int, int], density: float, seed: int):
    """Random [m, k] weight zeroed in whole blocks; row-block 0 pruned, row-block 1 kept."""
    g = torch.Generator().manual_seed(seed)
    gm, gk = -(-m // block[0]), -(-k // block[1])
    keep = torch.rand(gm, gk, generator=g) < density
    keep[0] = False
    if gm > 1:
        keep[1] = True
    return torch.randn(m, k, generator=g) * expand_blocks(keep, block, (m, k))


def assert_matches(y, ref):
    scale = float(ref.abs().max().clamp_min(1e-6))
    torch.testing.assert_close(y.cpu(), ref.cpu(), rtol=1e-4, atol=1e-4 * scale)


CONV_CASES = [
    # batch, c_in, h, w, c_out, kernel, stride, padding, dilation
    (1, 3, 7, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 6, 9, 7, 37, (3, 3), (2, 2), (1, 1), (2, 2)),
    (1, 5, 6, 8, 70, (3, 2), (1, 2), (2, 0), (1, 1)),
]


@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("target", [POCL, NVIDIA], ids=lambda t: t.name)
def test_conv_matches_masked_dense(interpret, target, case, variant):
    b, cin, h, w, cout, ks, stride, pad, dil = case
    k = cin * ks[0] * ks[1]
    block = target.simd_block() if variant == "simd" else target.tile_block()
    weight = block_masked(cout, k, block, 0.4, seed=cout + k)
    bias = torch.randn(cout)
    layer = interpret.conv2d(
        pack_for(weight, target, variant), bias, target, variant=variant,
        geometry=ConvGeometry(cin, ks, stride, pad, dil), relu=True,
    )  # fmt: skip
    x = torch.randn(b, cin, h, w)
    ref = F.conv2d(x, weight.reshape(cout, cin, *ks), bias, stride, pad, dil).relu()
    layer.count_visits = True
    y = layer(x)
    assert y.shape == ref.shape
    assert_matches(y, ref)
    # every kept column walked once per N tile and image, nothing else
    pixels = ref.shape[2] * ref.shape[3]
    assert layer.visited_columns == layer.kept_columns * layer.tiles(pixels) * b


@pytest.mark.parametrize("variant", ["tile", "simd"])
def test_walk_list_holds_only_kept_columns(interpret, variant):
    weight = block_masked(64, 96, NVIDIA.tile_block(), 0.3, seed=5)
    packed = pack_for(weight, NVIDIA, variant)
    layer = interpret.linear(packed, None, NVIDIA, variant=variant)
    block = packed.block
    kept = int(block_reduce(weight, block, "any").sum())  # K = 96 is a multiple of both blocks
    assert layer.kept_columns == kept * block[1]
    assert layer.kept_columns < (64 // block[0]) * 96


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
def test_linear_matches_masked_dense(interpret, batch, variant):
    m, k = 40, 70
    block = POCL.simd_block() if variant == "simd" else POCL.tile_block()
    weight = block_masked(m, k, block, 0.5, seed=batch)
    bias = torch.randn(m)
    layer = interpret.linear(pack_for(weight, POCL, variant), bias, POCL, variant=variant)
    x = torch.randn(batch, k)
    assert_matches(layer(x), F.linear(x, weight, bias))


def test_fully_pruned_layer_gives_bias(interpret):
    bias = torch.randn(20)
    layer = interpret.linear(pack_for(torch.zeros(20, 30), POCL, "tile"), bias, POCL,
                             variant="tile", relu=True)  # fmt: skip
    assert layer.kept_columns == 0
    assert torch.equal(layer(torch.randn(3, 30)), bias.relu().expand(3, 20))


def test_without_gpu_is_user_error(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UserError, match="backend='opencl' or 'cpu'"):
        get_backend("triton").check_available()


def test_bad_input_is_user_error(interpret):
    packed = pack_for(torch.randn(8, 27), POCL, "tile")
    layer = interpret.conv2d(packed, None, POCL, variant="tile",
                             geometry=ConvGeometry(3, (3, 3), (1, 1), (0, 0), (1, 1)))  # fmt: skip
    with pytest.raises(UserError, match="float32"):
        layer(torch.randn(1, 3, 5, 5, dtype=torch.float64))
    with pytest.raises(UserError, match="pack_for"):
        interpret.linear(packed, None, POCL, variant="simd")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
@pytest.mark.parametrize("variant", ["tile", "simd"])
def test_conv_on_gpu(monkeypatch, variant):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    weight = block_masked(128, 64 * 9, NVIDIA.tile_block(), 0.25, seed=2)
    layer = get_backend("triton").conv2d(
        pack_for(weight, NVIDIA, variant), None, NVIDIA, variant=variant,
        geometry=ConvGeometry(64, (3, 3), (1, 1), (1, 1), (1, 1)),
    )  # fmt: skip
    x = torch.randn(4, 64, 16, 16)
    ref = F.conv2d(x, weight.reshape(128, 64, 3, 3), padding=1)
    y = layer(x.cuda())
    assert y.is_cuda
    assert_matches(y, ref)
