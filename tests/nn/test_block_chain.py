"""Runs of fused residual blocks called as one native call (cpu backend)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from small_target import SMALL, backends
from test_chain import run_at
from test_residual import Net

from gpuprune.kernels.cpu.chain import IN, NONE, OUT, Block, CpuBlockChain
from gpuprune.nn import compile as compile_model
from gpuprune.nn.chain import ChainedSequential

pytestmark = pytest.mark.skipif("cpu" not in backends(), reason="no C compiler for the kernel")


@pytest.fixture(scope="module")
def compiled():
    net = Net().eval()  # blocks: identity-shortcut Bottleneck, strided one with a downsample
    return net, compile_model(net, target=SMALL, backend="cpu", methods="tile")  # Basic, Scaled


def _unchained(model):
    plain = copy.deepcopy(model)
    plain.blocks._gp_runs = {}
    return plain


def test_the_run_is_found_and_named(compiled):
    _, model = compiled
    assert type(model.blocks) is ChainedSequential
    run = model.blocks._gp_runs[0]
    assert (run.start, run.end) == (0, 3)  # the scaled block is not fused: it ends the run
    assert "residual blocks blocks.0-blocks.2: one cpu backend call per run" in (
        model.gpuprune_compile.notes)


@pytest.mark.parametrize("batch,size", [(1, 9), (3, 12)])
def test_chained_equals_blocks_one_by_one(compiled, batch, size):
    net, model = compiled
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        first, second, third = model(x), model(x), model(x)  # prepare, then the native call
        plain, want = _unchained(model)(x), net(x)
    assert torch.equal(second, plain) and torch.equal(third, plain) and torch.equal(first, plain)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-4)
    assert model.blocks._gp_runs[0].chain.chain._shapes  # the program was built and used


@pytest.mark.parametrize("threads,batch", [(2, 2), (2, 3)])
def test_blocks_run_image_by_image(compiled, threads, batch):
    """With an image per thread the blocks run whole images per thread, bitwise as one by
    one (the residual adds and the shortcut convolution included)."""
    net, model = compiled
    model = copy.deepcopy(model)
    x = torch.randn(batch, 3, 12, 12)
    first, second, plain, want = run_at(threads, net, model, _unchained, x)
    shapes = list(model.blocks._gp_runs[0].chain.chain._shapes)
    assert [s[0] for s in shapes] == [1]  # the one-image program only
    assert torch.equal(first, plain) and torch.equal(second, plain)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-4)


def test_hooks_and_replaced_children_run_the_blocks(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = _unchained(model)(x)
        hooked = copy.deepcopy(model)
        seen = []
        hooked.blocks[1].downsample[0].register_forward_hook(lambda m, i, o: seen.append(o))
        assert torch.equal(hooked(x), want) and torch.equal(hooked(x), want)
        assert len(seen) == 2  # the shortcut conv ran as a module both times
        edited, plain_net = copy.deepcopy(model), copy.deepcopy(net)
        edited.blocks[2].conv1 = plain_net.blocks[2].conv1  # a plain Conv2d
        torch.testing.assert_close(edited(x), plain_net(x), rtol=1e-4, atol=1e-4)


def test_copies_and_pickles_prepare_their_own(compiled):
    _, model = compiled
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
        model(x)
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert not other.blocks._gp_runs[0].chain.chain._shapes
            assert torch.equal(other(x), want) and torch.equal(other(x), want)


class _Layer:
    """A stand-in layer for the program: only its identity matters."""

    def __init__(self, name: str) -> None:
        self.name = name


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.booleans()), min_size=1,
                max_size=8))  # fmt: skip
def test_program_computes_the_blocks(spec):
    """Run the program on symbols: every step reads what the blocks one by one would read, no
    buffer is overwritten while something still needs it, and the last step writes OUT."""
    blocks = [Block(tuple(_Layer(f"b{b}p{i}") for i in range(n)),
                    _Layer(f"b{b}s") if conv else None, relu)
              for b, (n, conv, relu) in enumerate(spec)]  # fmt: skip
    shapes = [[None] * (len(b.path) + (b.shortcut is not None)) for b in blocks]
    steps, _ = CpuBlockChain.program(blocks, shapes)
    buffers = {IN: "x"}
    for step in steps:
        assert step.dst != step.src and step.dst != IN
        value = (step.layer.name, buffers[step.src])
        if step.res != NONE:
            value += ("+", buffers[step.res], step.res_relu)
        buffers[step.dst] = value
    want = "x"
    for b in blocks:
        y = want
        for layer in b.path[:-1]:
            y = (layer.name, y)
        side = want if b.shortcut is None else (b.shortcut.name, want)
        want = (b.path[-1].name, y, "+", side, b.relu)
    assert steps[-1].dst == OUT and buffers[OUT] == want
    # at most three scratch buffers hold a value some later step reads (the class docstring)
    for i, step in enumerate(steps):
        needed, rewritten = {step.dst} - {OUT}, set()
        for later in steps[i + 1:]:  # read before any rewrite: the value written up to step i
            needed |= {b for b in (later.src, later.res) if b >= 0 and b not in rewritten}
            rewritten.add(later.dst)
        assert len(needed) <= 3
