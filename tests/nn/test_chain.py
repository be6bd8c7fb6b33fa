"""Runs of skip convolutions in an nn.Sequential, called as one native call (cpu backend)."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
from small_target import SMALL, backends
from torch import nn

from gpuprune.nn import compile as compile_model
from gpuprune.nn.chain import ChainedSequential

pytestmark = pytest.mark.skipif("cpu" not in backends(), reason="no C compiler for the kernel")


def _block(c_in: int, c_out: int, stride: int = 1, pool: bool = False) -> list[nn.Module]:
    mods = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]  # fmt: skip
    return mods + ([nn.MaxPool2d(2, ceil_mode=True)] if pool else [])


def _features(seed: int) -> nn.Sequential:
    """Awkward shapes: ragged blocks (19, 37 filters), a stride-2 conv, a ceil-mode pool, a 1x1
    conv with a bias, a Dropout (not an Identity: it splits the run)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        *_block(3, 19), *_block(19, 37, pool=True), *_block(37, 24, stride=2),
        nn.Conv2d(24, 33, 1), nn.ReLU(), nn.Dropout(0.1), *_block(33, 16), *_block(16, 21),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) < 0.4)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net


def _unchained(model: nn.Sequential) -> nn.Sequential:
    """The same compiled model, its runs switched off (each layer called by itself)."""
    plain = copy.deepcopy(model)
    plain._gp_runs = {}
    return plain


@pytest.fixture(scope="module")
def compiled():
    net = _features(0)
    return net, compile_model(net, target=SMALL, backend="cpu", methods="tile")


def test_runs_are_found_and_named(compiled):
    _, model = compiled
    assert type(model) is ChainedSequential
    # convs 0, 3, 7 and the 1x1 at 10 (its ReLU at 11) in one run, the Dropout at 12 ends it;
    # the convs at 13 and 16 make the second
    assert sorted((r.start, r.end) for r in model._gp_runs.values()) == [(0, 12), (13, 19)]
    note = [n for n in model.gpuprune_compile.notes if n.startswith("convolutions")]
    assert note == ["convolutions 0-10, 13-16: one cpu backend call per run"]


@pytest.mark.parametrize("batch,size", [(1, 16), (3, 13), (2, 20)])
def test_chained_equals_layer_by_layer_and_masked_model(compiled, batch, size):
    net, model = compiled
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        first = model(x)  # prepares the chain: layer by layer
        chained = model(x)  # one native call per run
        plain = _unchained(model)(x)
        want = net(x)
    assert all(x.shape in r.chain._shapes for r in model._gp_runs.values() if r.start == 0)
    assert torch.equal(chained, first) and torch.equal(chained, plain)
    torch.testing.assert_close(chained, want, rtol=1e-4, atol=1e-4)


def run_at(threads, net, model, unchained, x):
    """``model(x)`` twice at ``threads`` threads (preparing, then native), then at one thread
    its ``unchained`` copy's and ``net``'s outputs."""
    torch.set_num_threads(threads)
    with torch.no_grad():
        first, second = model(x), model(x)
        torch.set_num_threads(1)
        return first, second, unchained(model)(x), net(x)


@pytest.mark.parametrize("threads,batch", [(2, 3), (3, 3), (2, 5)])
def test_a_batch_of_an_image_per_thread_runs_image_by_image(compiled, threads, batch):
    """Whole images per thread (one-image programs, any number left for the last thread)
    compute what the layers do one by one, bitwise; the batch's own program is never built."""
    net, model = compiled
    model = copy.deepcopy(model)
    x = torch.randn(batch, 3, 21, 21)  # every layer 6x6 or more: over half a panel per image
    first, second, plain, want = run_at(threads, net, model, _unchained, x)
    one = torch.Size((1, 3, 21, 21))
    runs = [r.chain for r in model._gp_runs.values()]
    assert one in runs[0]._shapes and x.shape not in runs[0]._shapes
    assert torch.equal(first, plain) and torch.equal(second, plain)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-4)


def test_fewer_images_than_threads_split_each_layer(compiled):
    _, model = compiled
    model = copy.deepcopy(model)
    x = torch.randn(2, 3, 13, 13)
    torch.set_num_threads(3)
    with torch.no_grad():
        model(x), model(x)
    chain = model._gp_runs[0].chain
    assert x.shape in chain._shapes and torch.Size((1, 3, 13, 13)) not in chain._shapes


def test_a_run_of_shrinking_layers_takes_its_wide_head_image_by_image():
    """Layers of 144, 36, 9 and 4 pixels per image: those over half a panel (a build's own
    width) run image by image, the rest on the batch, bitwise as one by one."""
    torch.manual_seed(1)
    net = nn.Sequential(
        *_block(3, 8), *_block(8, 8, stride=2), *_block(8, 8, stride=2), *_block(8, 8, stride=2),
    ).eval()  # fmt: skip
    model = compile_model(net, target=SMALL, backend="cpu", methods="tile")
    chain = model._gp_runs[0].chain
    x = torch.randn(4, 3, 12, 12)
    first, second, plain, want = run_at(2, net, model, _unchained, x)
    half = chain.layers[0].panel // 2
    head = sum(1 for _ in itertools.takewhile(lambda p: p > half, [144, 36, 9, 4]))
    assert 0 < head < 4  # 2 where a panel is 64 columns (AVX-512), 3 where it is 16
    assert [p.n for p in chain._parts[x.shape]] == [head, 4 - head]
    assert torch.equal(first, plain) and torch.equal(second, plain)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-4)


def test_images_too_small_for_their_panels_split_each_layer(compiled):
    """2x2 images: every layer is under half a panel per image on every build (the first 4
    pixels, the deeper ones 1), so the batch runs whole (its own program) however many
    threads."""
    net, model = compiled
    model = copy.deepcopy(model)
    x = torch.randn(4, 3, 2, 2)
    first, second, _, want = run_at(2, net, model, _unchained, x)
    chain = model._gp_runs[0].chain
    assert not chain._shapes[torch.Size((1, 3, 2, 2))].wide and x.shape in chain._shapes
    assert torch.equal(first, second)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-4)


def test_a_hooked_layer_runs_by_itself(compiled):
    _, model = compiled
    model = copy.deepcopy(model)
    seen = []
    handle = model[3].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        hooked = [model(x), model(x)]
    handle.remove()
    assert len(seen) == 2  # the hook fired on both calls: the run was not taken
    with torch.no_grad():
        assert torch.equal(model(x), hooked[1]) and torch.equal(model(x), hooked[0])


def test_copies_and_pickles_prepare_their_own_chain(compiled):
    _, model = compiled
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
        want = model(x)
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert all(not r.chain._shapes for r in other._gp_runs.values())
            assert torch.equal(other(x), want) and torch.equal(other(x), want)


def test_traced_models_call_the_layers(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 16, 16)
    fast = torch.compile(model, fullgraph=True, backend="aot_eager")
    program = torch.export.export(model, (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert ops.count("gpuprune.cpu_conv2d.default") == 6
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(program.module()(x), net(x), rtol=1e-4, atol=1e-4)


def test_an_edited_sequential_runs_as_written(compiled):
    net, model = compiled
    x = torch.randn(2, 3, 16, 16)
    edited, want_net = copy.deepcopy(model), copy.deepcopy(net)
    with torch.no_grad():
        edited(x), edited(x)  # runs prepared for this shape
        del edited[0:3]  # the first run's convs shift by three: its start is now a BatchNorm's
        del want_net[0:3]
        y = torch.randn(2, 19, 16, 16)
        torch.testing.assert_close(edited(y), want_net(y), rtol=1e-4, atol=1e-4)


def test_a_layer_rebuilding_its_arguments_leaves_the_run_intact(compiled):
    # counting visits sends a layer through its slow path, which rebuilds its cached arguments
    # for the shape; the run still points at (and holds) the ones it was built from
    _, model = compiled
    model = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = _unchained(model)(x)
        model(x), model(x)
        layer = model[3]._run
        inner = model[2](model[1](model[0](x)))
        sizes = [(t.numel(), t.dtype) for t in layer._shapes[inner.shape][1:]]
        layer.count_visits = True
        layer(inner)
        layer.count_visits = False
        # whatever reuses the memory of the arguments the layer dropped
        junk = [torch.full((n,), 10**6, dtype=dtype) for n, dtype in sizes * 50]
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-6)
        del junk
