"""The CPU skip kernels as PyTorch custom ops: op checks, torch.compile(fullgraph) and export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for
from gpuprune.kernels.cpu import build

try:
    build.find_compiler()
    HAS_CC = True
except UserError:
    HAS_CC = False

pytestmark = pytest.mark.skipif(not HAS_CC, reason="no C compiler to build the kernel")

POCL = get_target("cpu-pocl")


def _masked(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g)
    return w * (torch.rand(m, k, generator=g) < 0.5)


def test_conv_op_passes_opcheck_on_an_awkward_shape():
    # 37 filters (ragged row-block), 5 channels x 3x3 = 45 (ragged K block), stride 2, 11x7 input
    weight = _masked(37, 45, seed=0)
    layer = get_backend("cpu").conv2d(
        pack_for(weight, POCL, "tile"), torch.randn(37), POCL, variant="tile",
        geometry=ConvGeometry(5, (3, 3), (2, 1), (1, 0), (1, 1)), relu=True,
    )  # fmt: skip
    x = torch.randn(3, 5, 11, 7)
    args = (x, layer.wt, layer.row_ptr, layer.col_idx, layer.bias, layer.used,
            [3, 3, 2, 1, 1, 0, 1, 1], 37, 32, 32, True, 0)  # fmt: skip
    torch.library.opcheck(torch.ops.gpuprune.cpu_conv2d, args)
    want = torch.relu(
        torch.nn.functional.conv2d(x, from_gemm(weight, (37, 5, 3, 3)), layer.bias, (2, 1), (1, 0))
    )
    torch.testing.assert_close(torch.ops.gpuprune.cpu_conv2d(*args), want, rtol=1e-4, atol=1e-4)


def test_conv_op_with_fused_pool_passes_opcheck():
    weight = _masked(20, 36, seed=2)
    layer = get_backend("cpu").conv2d(
        pack_for(weight, POCL, "tile"), torch.randn(20), POCL, variant="tile",
        geometry=ConvGeometry(4, (3, 3), (1, 1), (1, 1), (1, 1)), relu=True, pool="ceil",
    )  # fmt: skip
    x = torch.randn(2, 4, 9, 12)
    args = (x, layer.wt, layer.row_ptr, layer.col_idx, layer.bias, layer.used,
            [3, 3, 1, 1, 1, 1, 1, 1], 20, 32, 32, True, 0, 2)  # fmt: skip  (2: ceil mode)
    torch.library.opcheck(torch.ops.gpuprune.cpu_conv2d, args)
    conv = torch.nn.functional.conv2d(x, from_gemm(weight, (20, 4, 3, 3)), layer.bias, 1, 1)
    want = torch.nn.functional.max_pool2d(conv.relu(), 2, ceil_mode=True)
    torch.testing.assert_close(torch.ops.gpuprune.cpu_conv2d(*args), want, rtol=1e-4, atol=1e-4)


def test_linear_op_passes_opcheck():
    weight = _masked(20, 70, seed=1)
    layer = get_backend("cpu").linear(pack_for(weight, POCL, "simd"), None, POCL, variant="simd")
    x = torch.randn(5, 70)
    args = (x, layer.wt, layer.row_ptr, layer.col_idx, None, 20, *POCL.simd_block(), False)
    torch.library.opcheck(torch.ops.gpuprune.cpu_linear, args)
    torch.testing.assert_close(torch.ops.gpuprune.cpu_linear(*args), x @ weight.T)


class _Net(nn.Module):
    """Conv + BN + ReLU, pooling, a residual add and a linear head: ops around the skip ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.pool3 = nn.MaxPool2d(2)  # fused into conv3's kernel
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.pool(self.conv2(y) + y)
        y = self.pool3(self.conv3(y))
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def compiled():
    from gpuprune.nn import compile as compile_model

    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        for m in (net.conv2, net.conv3, net.fc):
            m.weight.mul_(torch.rand_like(m.weight) < 0.3)
    model = compile_model(net, target=POCL, backend="cpu", methods="tile", verbose=False)
    assert len(model.gpuprune_compile.layers) == 4
    assert [lay.pool_fused for lay in model.gpuprune_compile.layers] == [False, False, True, False]
    # the unfused pool runs the backend's own (PyTorch's under tracing): traced below too
    assert type(model.pool).__name__ == "CpuMaxPool2d"
    return net, model


def test_compiled_model_runs_under_torch_compile_fullgraph(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 8, 8)
    # aot_eager: the same tracing (Dynamo, AOTAutograd, the fake impls) without Inductor's
    # C++ build, which takes minutes on a loaded 2-core host
    fast = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_model_runs_under_inductor(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 8, 8)
    fast = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-4)


def test_compiled_model_exports(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(model, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"gpuprune.cpu_conv2d.default", "gpuprune.cpu_linear.default"} <= ops
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x), rtol=1e-4, atol=1e-4)
