"""Residual blocks whose shortcut add and ReLU run in the last conv's store (cpu backend)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from small_target import SMALL, backends
from torch import nn

from gpuprune.nn import compile as compile_model
from gpuprune.nn.residual import FusedResidual

pytestmark = pytest.mark.skipif("cpu" not in backends(), reason="no C compiler for the kernel")


class Bottleneck(nn.Module):
    """torchvision's shape: one shared ReLU, ``downsample``, ``out += identity``."""

    def __init__(self, c_in: int, mid: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, 2 * mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * mid)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != 2 * mid:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, 2 * mid, 1, stride, bias=False),
                                            nn.BatchNorm2d(2 * mid))  # fmt: skip

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Basic(nn.Module):
    """Functional ReLUs, the shortcut on the left of the add, no ReLU after it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class Scaled(Basic):
    """Not a plain residual block: the branch is scaled before the add."""

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) * 0.5 + x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 40, 3, padding=1)
        self.blocks = nn.Sequential(Bottleneck(40, 20, 1), Bottleneck(40, 24, 2), Basic(48),
                                    Scaled(48))  # fmt: skip
        self.head = nn.Linear(48, 10)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.weight.mul_(torch.rand_like(m.weight) < 0.4)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def compiled():
    net = Net().eval()
    return net, compile_model(net, target=SMALL, backend="cpu", methods="tile")


def test_plain_blocks_are_matched_and_reported(compiled):
    _, model = compiled
    fused = [i for i, b in enumerate(model.blocks) if isinstance(b.__dict__.get("forward"),
                                                                 FusedResidual)]  # fmt: skip
    assert fused == [0, 1, 2]  # not the scaled branch
    m = model.blocks[1].forward.match
    assert m.convs == ("conv1", "conv2", "conv3") and m.shortcut == "downsample" and m.relu
    assert model.blocks[2].forward.match.shortcut is None and not model.blocks[2].forward.match.relu
    layers = {lay.name: lay for lay in model.gpuprune_compile.layers}
    assert layers["blocks.0.conv1"].relu_fused and not layers["blocks.0.conv3"].relu_fused
    note = [n for n in model.gpuprune_compile.notes if n.startswith("residual")]
    assert note and "blocks.0, blocks.1, blocks.2:" in note[0]


@pytest.mark.parametrize("batch,size", [(1, 9), (3, 12)])
def test_fused_blocks_equal_the_masked_model(compiled, batch, size):
    net, model = compiled
    x = torch.randn(batch, 3, size, size)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        m.__dict__.pop("forward", None)  # the blocks' own forwards
    with torch.no_grad():
        first, second, unfused, want = model(x), model(x), plain(x), net(x)
    torch.testing.assert_close(second, first, rtol=0, atol=1e-6)
    torch.testing.assert_close(second, unfused, rtol=0, atol=1e-5)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-4)


def test_a_hooked_child_sees_its_own_output(compiled):
    _, model = compiled
    model = copy.deepcopy(model)
    seen = []
    model.blocks[0].conv3.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
        conv3_in = model.blocks[0].relu(model.blocks[0].conv2(model.blocks[0].conv1(
            model.stem(x))))  # fmt: skip
    assert len(seen) == 2  # the original forward ran: conv3's output before the add
    torch.testing.assert_close(seen[1], model.blocks[0].conv3(conv3_in), rtol=0, atol=1e-6)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-6)


def test_copies_pickles_and_traces(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert other.blocks[0].forward.block is other.blocks[0]
            torch.testing.assert_close(other(x), want, rtol=0, atol=1e-6)
        fast = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-4)
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), net(x), rtol=1e-4, atol=1e-4)


def test_a_replaced_child_runs_the_blocks_own_forward(compiled):
    net, model = compiled
    model, net = copy.deepcopy(model), copy.deepcopy(net)
    model.blocks[0].conv3 = copy.deepcopy(net.blocks[0].conv3)  # a plain Conv2d: no residual
    model.blocks[0].bn3 = copy.deepcopy(net.blocks[0].bn3)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), net(x), rtol=1e-4, atol=1e-4)
