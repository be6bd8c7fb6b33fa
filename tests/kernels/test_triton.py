"""The triton backend's implicit-GEMM kernel against the masked dense PyTorch result.

Runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``), so shapes stay tiny; the tests marked
``gpu`` run the compiled kernel on a real CUDA/ROCm device when there is one. Each dtype is
checked against a float64 reference computed from the same rounded inputs, with a tolerance
set by that dtype's output rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import block_reduce, expand_blocks, from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for

pytest.importorskip("triton")
pytestmark = pytest.mark.triton

POCL = get_target("cpu-pocl")  # tile (32, 32), simd (4, 1): R < 16 and a 32-deep K block
NVIDIA = get_target("nvidia")  # tile (64, 32), simd (16, 1)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# relative to the output's scale: float32 sums differ in order; half outputs are rounded once
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


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


def assert_matches(y, ref, dtype=torch.float32):
    assert y.dtype == dtype
    scale = float(ref.abs().max().clamp_min(1e-6))
    rel = TOLERANCE[dtype]
    torch.testing.assert_close(y.cpu().double(), ref.cpu().double(), rtol=rel, atol=rel * scale)


def rounded(t, dtype):
    """``t`` as the kernel sees it in ``dtype``, in float64 for the reference."""
    return t.to(dtype).double()


CONV_CASES = [
    # batch, c_in, h, w, c_out, kernel, stride, padding, dilation
    (1, 3, 7, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1)),  # K = 27: one ragged K block
    (2, 6, 9, 7, 37, (3, 3), (2, 2), (1, 1), (2, 2)),  # stride 2 and dilation, ragged M
    (1, 5, 6, 8, 70, (3, 2), (1, 2), (2, 0), (1, 1)),  # rectangular kernel, asymmetric
    (3, 40, 5, 3, 20, (1, 1), (1, 1), (0, 0), (1, 1)),  # 1x1, K = 40
]


def run_conv(backend, target, case, variant, dtype, channels_last, seed=0):
    b, cin, h, w, cout, ks, stride, pad, dil = case
    k = cin * ks[0] * ks[1]
    block = target.simd_block() if variant == "simd" else target.tile_block()
    weight = block_masked(cout, k, block, 0.4, seed=cout + k + seed)
    bias = torch.randn(cout)
    layer = backend.conv2d(
        pack_for(weight, target, variant), bias, target, variant=variant,
        geometry=ConvGeometry(cin, ks, stride, pad, dil), relu=True,
    )  # fmt: skip
    x = torch.randn(b, cin, h, w).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ref = F.conv2d(rounded(x, dtype), from_gemm(rounded(weight, dtype), (cout, cin, *ks)),
                   bias.double(), stride, pad, dil).relu()  # fmt: skip
    layer.count_visits = True
    y = layer(x)
    assert y.shape == ref.shape
    assert_matches(y, ref, dtype)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else
                           torch.contiguous_format)  # fmt: skip
    # every kept column walked once per N tile (batch folded into N), nothing else
    n = b * ref.shape[2] * ref.shape[3]
    assert layer.visited_columns == layer.kept_columns * layer.tiles(n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv_matches_masked_dense(interpret, case, variant, dtype):
    # the layout alternates with the case so both are met in every dtype and variant
    channels_last = CONV_CASES.index(case) % 2 == 1
    run_conv(interpret, NVIDIA, case, variant, dtype, channels_last)


@pytest.mark.parametrize("variant", ["tile", "simd"])
@pytest.mark.parametrize("case", CONV_CASES[:2], ids=lambda c: "x".join(map(str, c[:5])))
def test_conv_small_simd_rows(interpret, case, variant):
    """cpu-pocl's R = 4 row-groups run a 4-row dot (no padding to 16 rows)."""
    run_conv(interpret, POCL, case, variant, torch.float32, channels_last=False)


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv_every_combination(interpret, case, variant, dtype, channels_last):
    """Both layouts in every dtype and variant, on cpu-pocl's blocks (NVIDIA's run above)."""
    run_conv(interpret, POCL, case, variant, dtype, channels_last, seed=1)


def test_strided_input_view(interpret):
    """A non-contiguous input (a slice) is read through its strides, not copied."""
    weight = block_masked(16, 4 * 9, NVIDIA.tile_block(), 0.5, seed=3)
    layer = interpret.conv2d(pack_for(weight, NVIDIA, "tile"), None, NVIDIA, variant="tile",
                             geometry=ConvGeometry(4, (3, 3), (1, 1), (1, 1), (1, 1)))
    x = torch.randn(2, 8, 6, 9)[:, ::2, :, 1:8]
    assert not x.is_contiguous()
    ref = F.conv2d(x, from_gemm(weight, (16, 4, 3, 3)), padding=1)
    assert_matches(layer(x), ref)


@pytest.mark.parametrize("variant", ["tile", "simd"])
def test_walk_list_holds_only_kept_columns(interpret, variant):
    weight = block_masked(64, 96, NVIDIA.tile_block(), 0.3, seed=5)
    packed = pack_for(weight, NVIDIA, variant)
    layer = interpret.linear(packed, None, NVIDIA, variant=variant)
    block = packed.block
    kept = int(block_reduce(weight, block, "any").sum())  # K = 96 is a multiple of both blocks
    assert layer.kept_columns == kept * block[1]
    assert layer.kept_columns < (64 // block[0]) * 96
    assert layer.tile == (variant == "tile")
    if variant == "tile":  # one program step = one MWG x KWG block of the target
        assert (layer.block_m, layer.block_k) == NVIDIA.tile_block()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["tile", "simd", "dense"])
def test_linear_matches_masked_dense(interpret, variant, dtype):
    m, k, batch = 40, 70, 5
    block = POCL.simd_block() if variant == "simd" else POCL.tile_block()
    weight = block_masked(m, k, block, 0.5, seed=batch)
    bias = torch.randn(m)
    layer = interpret.linear(pack_for(weight, POCL, variant), bias, POCL, variant=variant)
    x = torch.randn(batch, k).to(dtype)
    ref = F.linear(rounded(x, dtype), rounded(weight, dtype), bias.double())
    assert_matches(layer(x), ref, dtype)


def test_linear_batch_one(interpret):
    weight = block_masked(33, 50, NVIDIA.tile_block(), 0.5, seed=9)
    layer = interpret.linear(pack_for(weight, NVIDIA, "simd"), None, NVIDIA, variant="simd")
    x = torch.randn(1, 50)
    assert_matches(layer(x), F.linear(x, weight))


def test_fully_pruned_layer_gives_bias(interpret):
    bias = torch.randn(20)
    layer = interpret.linear(pack_for(torch.zeros(20, 30), POCL, "tile"), bias, POCL,
                             variant="tile", relu=True)  # fmt: skip
    assert layer.kept_columns == 0
    assert torch.equal(layer(torch.randn(3, 30)), bias.relu().expand(3, 20))


def test_autocast_computes_in_the_autocast_dtype(interpret):
    weight = block_masked(24, 3 * 9, NVIDIA.tile_block(), 0.6, seed=4)
    layer = interpret.conv2d(pack_for(weight, NVIDIA, "tile"), None, NVIDIA, variant="tile",
                             geometry=ConvGeometry(3, (3, 3), (1, 1), (1, 1), (1, 1)))
    x = torch.randn(1, 3, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the interpreter's device is the CPU
        y = layer(x)
        dense = F.conv2d(x, from_gemm(weight, (24, 3, 3, 3)), padding=1)
    assert y.dtype == dense.dtype == torch.bfloat16
    ref = F.conv2d(rounded(x, torch.bfloat16),
                   from_gemm(rounded(weight, torch.bfloat16), (24, 3, 3, 3)), padding=1)
    assert_matches(y, ref, torch.bfloat16)


def test_fp32_precision_follows_pytorch(monkeypatch):
    from gpuprune.kernels.triton.backend import fp32_precision

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)
    assert fp32_precision("conv") == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert fp32_precision("conv") == "ieee"
    matmul = torch.backends.cuda.matmul  # a settings object monkeypatch cannot restore
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert fp32_precision("linear") == "ieee"
        matmul.allow_tf32 = True
        assert fp32_precision("linear") == "tf32"
    finally:
        matmul.allow_tf32 = before


def test_interpreter_autotunes_one_config(interpret):
    from gpuprune.kernels.triton.backend import _kernels

    kernels = _kernels()
    assert kernels.INTERPRETED
    assert len(kernels.skip_conv_gemm.configs) == 1
    assert len(kernels.GPU_CONFIGS) > 1
    assert {"M", "N", "K"} <= set(kernels.skip_conv_gemm.keys)


def test_compile_half_model(interpret):
    from gpuprune import compile as gp_compile

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16, 10))  # fmt: skip
    with torch.no_grad():
        model[0].weight[:, :, 0] = 0
        model[3].weight[:, :64] = 0
    model = model.half()
    compiled = gp_compile(model, "cpu-pocl", backend="triton", methods="tile", verbose=False)
    assert len(compiled.gpuprune_compile.layers) == 2
    x = torch.randn(2, 3, 4, 4).half()
    y = compiled(x)
    assert y.dtype == torch.float16
    with torch.no_grad():
        ref = model.double()(x.double())
    assert_matches(y, ref, torch.float16)


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
    with pytest.raises(UserError, match="float16"):
        layer(torch.randn(1, 3, 5, 5, dtype=torch.float64))
    with pytest.raises(UserError, match="receptive field"):
        layer(torch.randn(1, 3, 2, 5))
    with pytest.raises(UserError, match="pack_for"):
        interpret.linear(packed, None, POCL, variant="simd")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["tile", "simd"])
def test_conv_on_gpu(monkeypatch, variant, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    weight = block_masked(128, 64 * 9, NVIDIA.tile_block(), 0.25, seed=2)
    layer = get_backend("triton").conv2d(
        pack_for(weight, NVIDIA, variant), None, NVIDIA, variant=variant,
        geometry=ConvGeometry(64, (3, 3), (1, 1), (1, 1), (1, 1)),
    )  # fmt: skip
    x = torch.randn(4, 64, 16, 16).to(dtype)
    ref = F.conv2d(rounded(x, dtype), from_gemm(rounded(weight, dtype), (128, 64, 3, 3)), padding=1)
    y = layer(x.cuda().to(memory_format=torch.channels_last))
    assert y.is_cuda
    assert_matches(y, ref, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_tf32_like_cudnn_on_gpu(monkeypatch):
    """With PyTorch's default TF32 for convolutions, the kernel lands within TF32 error too."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    weight = block_masked(96, 32 * 9, NVIDIA.tile_block(), 0.5, seed=6)
    layer = get_backend("triton").conv2d(
        pack_for(weight, NVIDIA, "tile"), None, NVIDIA, variant="tile",
        geometry=ConvGeometry(32, (3, 3), (2, 2), (1, 1), (1, 1)),
    )  # fmt: skip
    x = torch.randn(3, 32, 15, 13)
    ref = F.conv2d(x.double(), from_gemm(weight.double(), (96, 32, 3, 3)), stride=2, padding=1)
    y = layer(x.cuda())
    scale = float(ref.abs().max())
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-2, atol=1e-2 * scale)
