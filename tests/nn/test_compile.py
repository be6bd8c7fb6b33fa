"""compile(): BN folding, ReLU fusion, which layers are swapped, equality with the masked model."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import gpuprune.prune as gp
from gpuprune.arch import get_target
from gpuprune.errors import UnsupportedLayerError, UserError
from gpuprune.gemm import block_grid, expand_blocks, from_gemm, gemm_view
from gpuprune.kernels.cpu.pool import CpuMaxPool2d
from gpuprune.kernels.opencl import context as cl_context
from gpuprune.nn import SkipConv2d, SkipLinear, compile

POCL = get_target("cpu-pocl")


def _has_cc() -> bool:
    from gpuprune.kernels.cpu import build

    try:
        build.find_compiler()
    except UserError:
        return False
    return True


needs_cc = pytest.mark.skipif(not _has_cc(), reason="no C compiler for the cpu backend")


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 40, 3, padding=1, bias=False),
        nn.BatchNorm2d(40),
        nn.ReLU(inplace=True),
        nn.Conv2d(40, 36, 3, stride=2, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(36, 8, 1),  # left unpruned: stays dense
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    return net.eval()


def _prune_blocks(layer: nn.Module, block: tuple[int, int], seed: int) -> None:
    w = gemm_view(layer.weight)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(block_grid(tuple(w.shape), block), generator=gen)
    with torch.no_grad():
        layer.weight.copy_(from_gemm(w * expand_blocks(keep < 0.5, block, tuple(w.shape)),
                                     layer.weight))  # fmt: skip


@pytest.fixture
def pruned() -> nn.Module:
    net = _net()
    for i, idx in enumerate((0, 3, 7)):
        _prune_blocks(net[idx], POCL.tile_block(), seed=i)
    return net


def test_reference_compile_equals_masked_model(pruned, capsys, caplog):
    x = torch.randn(2, 3, 8, 8)
    out = compile(pruned, POCL, backend="reference")
    torch.testing.assert_close(out(x), pruned(x), rtol=1e-4, atol=1e-4)
    report = out.gpuprune_compile
    assert [lay.name for lay in report.layers] == ["0", "3", "7"]
    assert [d.name for d in report.dense] == ["5"]
    assert report.layers[0].bn_folded and report.layers[0].relu_fused
    assert isinstance(out[0], SkipConv2d) and isinstance(out[1], nn.Identity)
    assert isinstance(out[7], SkipLinear) and isinstance(out[5], nn.Conv2d)
    assert all(0 < lay.skippable < 1 for lay in report.layers)
    assert report.backend == "reference" and not out.training
    assert capsys.readouterr().out == ""  # a library call does not print
    with caplog.at_level(logging.INFO, logger="gpuprune.nn.compile"):
        compile(pruned, POCL, backend="reference", verbose=True)
    assert "skippable" in caplog.text and "skippable" in report.summary()
    assert isinstance(pruned[0], nn.Conv2d) and not isinstance(pruned[0], SkipConv2d)  # a copy


@pytest.mark.opencl
def test_opencl_compile_simd_methods_equal_masked_model():
    net = _net()
    for i, idx in enumerate((0, 3, 7)):
        _prune_blocks(net[idx], POCL.simd_block(), seed=10 + i)
    x = torch.randn(1, 3, 7, 7)  # batch 1, odd size
    methods = {"0": "simd", "3": "simd-balanced", "7": "tile"}
    out = compile(net, POCL, backend="opencl", methods=methods, verbose=False)
    torch.testing.assert_close(out(x), net(x), rtol=1e-4, atol=1e-4)
    report = out.gpuprune_compile
    assert [lay.variant for lay in report.layers] == ["simd", "simd", "tile"]
    assert report.backend == "opencl" and report.device


def test_parametrized_masks_from_the_pruner(capsys):
    net = _net()
    result = gp.prune(
        net, method="tile", sparsity=0.5, target=POCL, exclude_first_last=False,
        input_size=(3, 8, 8), skip_small=True,
    )
    x = torch.randn(2, 3, 8, 8)
    want = net(x)
    out = compile(net, POCL, backend="reference", methods=dict.fromkeys(result.plan.names, "tile"))
    torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-4)
    planned = compile(net, backend="reference")  # no methods, no target: all from the plan
    assert [lay.name for lay in planned.gpuprune_compile.layers] == result.plan.names
    assert planned.gpuprune_compile.target == POCL.name
    torch.testing.assert_close(planned(x), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net(x), want)  # the user's parametrized model still works


def test_auto_falls_back_with_a_message(pruned, monkeypatch):
    def no_device():
        raise cl_context.DeviceNotFoundError("no OpenCL platform or device found", "make setup")

    monkeypatch.setattr("gpuprune.kernels.opencl.backend.get_device", no_device)
    monkeypatch.setattr("gpuprune.kernels.opencl.backend.get_usable_device", no_device)
    out = compile(pruned, POCL, backend="auto", verbose=False)
    report = out.gpuprune_compile
    assert report.backend in ("cpu", "reference")
    auto = [note for note in report.notes if note.startswith("backend auto:")]
    assert len(auto) == 1 and "no OpenCL platform" in auto[0]  # the choice, stated once
    with pytest.raises(UserError, match="make setup"):
        compile(pruned, POCL, backend="opencl")


def test_bad_input(pruned):
    with pytest.raises(UserError, match="float32"):
        compile(copy.deepcopy(pruned).double(), POCL, backend="reference")
    with pytest.raises(UserError, match="unknown backend"):
        compile(pruned, POCL, backend="vulkan")
    with pytest.raises(UserError, match="not a Conv2d/Linear"):
        compile(pruned, POCL, backend="reference", methods={"1": "tile"})
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))  # group GEMMs 2x18: under a block
    with pytest.warns(UserWarning) as caught:
        report = compile(grouped, POCL, backend="reference", methods={"0": "tile"}).gpuprune_compile
    assert any("grouped conv" in str(w.message) for w in caught)
    assert [d.name for d in report.dense] == ["0"] and "smaller than" in report.dense[0].reason
    with pytest.raises(UnsupportedLayerError, match="ConvTranspose2d"):
        SkipConv2d.from_conv(nn.ConvTranspose2d(3, 3, 3), POCL, _reference())
    tconv = nn.Sequential(nn.ConvTranspose2d(3, 3, 3, stride=2))
    with pytest.warns(UserWarning, match="no layer compiled"):
        report = compile(tconv, POCL, backend="reference").gpuprune_compile
    assert [d.name for d in report.dense] == ["0"] and "ConvTranspose2d" in report.dense[0].reason
    out = compile(pruned, POCL, backend="reference", verbose=False)
    with pytest.raises(UserError, match="float32"):
        out(torch.randn(1, 3, 8, 8, dtype=torch.float64))


def _reference():
    from gpuprune.kernels import get_backend

    return get_backend("reference")


class _Residual(nn.Module):
    """One ReLU module called twice and a conv called twice: neither may be fused away."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 40, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(40)
        self.conv2 = nn.Conv2d(40, 40, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out) + self.conv2(out * 0.5)
        return self.relu(out + 1.0)


def test_shared_modules_are_not_fused():
    torch.manual_seed(1)
    net = _Residual().eval()
    net.bn1.running_var.uniform_(0.5, 2)
    for conv in (net.conv1, net.conv2):
        _prune_blocks(conv, POCL.tile_block(), seed=3)
    x = torch.randn(1, 4, 6, 6)
    methods = {"conv1": "tile", "conv2": "tile"}
    out = compile(net, POCL, backend="reference", methods=methods, verbose=False)
    torch.testing.assert_close(out(x), net(x), rtol=1e-4, atol=1e-4)
    layers = {lay.name: lay for lay in out.gpuprune_compile.layers}
    assert layers["conv1"].bn_folded and not layers["conv1"].relu_fused
    assert not layers["conv2"].relu_fused and isinstance(out.relu, nn.ReLU)


@pytest.mark.opencl
def test_model_pruned_for_one_target_compiled_for_another():
    """Blocks pruned for nvidia (64x32 tiles) compiled for nvidia and for cpu-pocl agree."""
    nvidia = get_target("nvidia")
    net = _net()
    for i, idx in enumerate((0, 3, 7)):
        _prune_blocks(net[idx], nvidia.tile_block(), seed=20 + i)
    x = torch.randn(2, 3, 8, 8)
    outs = {}
    for name, target in (("nvidia", nvidia), ("pocl", POCL)):
        for method in ("tile", "simd"):
            methods = dict.fromkeys(("0", "3", "7"), method)
            model = compile(net, target, backend="opencl", methods=methods, verbose=False)
            outs[name, method] = model(x)
    for out in outs.values():
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)


def _vgg_like() -> nn.Module:
    """Conv-BN-ReLU-pool, conv-ReLU-ceil-mode pool, conv-pool without a ReLU (all fusable), a 3x3
    stride-2 pool (not), on odd spatial sizes."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(24, 40, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(40, 36, 3, padding=1), nn.MaxPool2d(kernel_size=(2, 2)),
        nn.Conv2d(36, 20, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 5),
    )  # fmt: skip
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    for idx in (0, 4, 7, 9):
        _prune_blocks(net[idx], POCL.tile_block(), seed=idx)
    return net.eval()


@needs_cc
def test_cpu_compile_fuses_2x2_max_pools():
    net = _vgg_like()
    convs = {"0": "tile", "4": "tile", "7": "simd", "9": "tile"}
    out = compile(net, POCL, backend="cpu", kernels=convs, verbose=False)
    layers = {lay.name: lay for lay in out.gpuprune_compile.layers}
    assert {n for n, lay in layers.items() if lay.pool_fused} == {"0", "4", "7"}
    assert all(isinstance(out[i], nn.Identity) for i in (3, 6, 8))
    # the pool no kernel fused runs the cpu backend's pool kernel, and the report says so
    assert isinstance(out[11], CpuMaxPool2d) and not out[9].pool
    assert any(n.startswith("max pool 11:") for n in out.gpuprune_compile.notes)
    assert (out[0].pool, out[4].pool) == ("floor", "ceil")
    cols, rows = out.gpuprune_compile.table()
    fused = {row[0]: row[cols.index("fused")] for row in rows}
    assert fused["0"] == "bn+relu+maxpool" and fused["7"] == "maxpool"
    assert "2x2 max pool fused" in out.gpuprune_compile.summary()
    for shape in ((1, 3, 29, 27), (3, 3, 33, 35)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = net(x)
            torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-4)
            cl = x.to(memory_format=torch.channels_last)
            torch.testing.assert_close(out(cl), want, rtol=1e-4, atol=1e-4)


@needs_cc
def test_pool_is_fused_only_where_the_backend_pools_and_nothing_else_reads_its_input():
    net = _vgg_like()
    out = compile(net, POCL, backend="reference", kernels="tile", verbose=False)
    assert not any(lay.pool_fused for lay in out.gpuprune_compile.layers)
    assert isinstance(out[3], nn.MaxPool2d)

    class Both(nn.Module):  # the ReLU's output is pooled and also read by the mean
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu, self.pool = nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)

        def forward(self, x):
            y = self.relu(self.conv(x))
            return self.pool(y).sum((1, 2, 3)) + y.mean((1, 2, 3))

    both = Both().eval()
    out = compile(both, POCL, backend="cpu", kernels="tile", verbose=False)
    assert not out.gpuprune_compile.layers[0].pool_fused and isinstance(out.pool, CpuMaxPool2d)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(out(x), both(x), rtol=1e-4, atol=1e-4)


class _Head(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear in a custom forward (the fx rule) and the same in
    an nn.Sequential (the fallback rule)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = nn.Linear(70, 45)
        self.bn = nn.BatchNorm1d(45)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(45, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.fc2(self.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cc)])
@pytest.mark.parametrize("sequential", [False, True])
def test_batchnorm1d_after_a_linear_is_folded(backend, sequential, monkeypatch):
    head = _Head().eval()
    if sequential:  # and found by the rule for models fx cannot trace
        head = nn.Sequential(head.fc1, head.bn, head.relu, head.fc2).eval()
        from gpuprune.nn import fold

        monkeypatch.setattr(fold, "_fx_chains", lambda model: 1 / 0)
    fc1 = head[0] if sequential else head.fc1
    _prune_blocks(fc1, POCL.tile_block(), seed=5)
    out = compile(head, POCL, backend=backend, methods="tile", verbose=False)
    first = out.gpuprune_compile.layers[0]
    assert first.bn_folded and first.relu_fused
    x = torch.randn(3, 70)
    with torch.no_grad():
        torch.testing.assert_close(out(x), head(x), rtol=1e-4, atol=1e-4)
    layer = out[0] if sequential else out.fc1
    with pytest.raises(UserError, match="BatchNorm1d"):  # [B, L, K]: the fold would be wrong
        layer(torch.randn(2, 45, 70))


def test_batchnorm1d_on_batch_statistics_is_not_folded():
    head = _Head().train()
    head.bn.track_running_stats = False
    head.bn.running_mean = head.bn.running_var = None
    head.eval()
    _prune_blocks(head.fc1, POCL.tile_block(), seed=5)
    out = compile(head, POCL, backend="reference", methods="tile", verbose=False)
    assert not out.gpuprune_compile.layers[0].bn_folded
    x = torch.randn(4, 70)
    with torch.no_grad():
        torch.testing.assert_close(out(x), head(x), rtol=1e-4, atol=1e-4)
