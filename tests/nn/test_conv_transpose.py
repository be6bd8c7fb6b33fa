"""ConvTranspose2d: pruned through the Conv2d it equals (rows are output channels), compiled as
that Conv2d at stride 1, left dense with the reason at stride > 1; masks exact either way."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from small_target import SMALL, backends
from torch import nn

import gpuprune.prune as gp
from gpuprune.errors import UnsupportedLayerError
from gpuprune.gemm import TransposedConv, conv_layout, gemm_shape, gemm_view, transposed_layout
from gpuprune.geometry import ConvGeometry
from gpuprune.nn import SkipConv2d, SkipGroupedConv2d, compile


@pytest.mark.parametrize("cin,cout,k,pad,dil,groups", [
    (6, 10, 3, 1, 1, 1), (8, 6, 5, 0, 1, 2), (4, 8, (3, 2), (2, 1), (2, 1), 4), (3, 5, 1, 0, 1, 1),
])  # fmt: skip
def test_stride_one_transposed_conv_is_the_conv_of_its_view(cin, cout, k, pad, dil, groups):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin, cout, k, padding=pad, dilation=dil, groups=groups)
    w = layer.weight.detach()
    assert torch.equal(transposed_layout(conv_layout(w, groups), groups), w)
    g = ConvGeometry.of_transposed(layer)
    x = torch.randn(2, cin, 7, 9)
    got = F.conv2d(x, conv_layout(w, groups), layer.bias, padding=g.padding, dilation=g.dilation,
                   groups=groups)  # fmt: skip
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-5)
    m, kk = gemm_shape(layer)
    assert (m, kk) == (cout, cin // groups * w.shape[2] * w.shape[3]) and kk == g.k
    assert gemm_view(layer).shape == (m, kk) == gemm_view(TransposedConv(layer)).shape


def test_strided_transposed_conv_has_no_skip_lowering():
    with pytest.raises(UnsupportedLayerError, match=r"stride \(2, 2\).*4x the work"):
        ConvGeometry.of_transposed(nn.ConvTranspose2d(4, 4, 3, stride=2))
    with pytest.raises(UnsupportedLayerError, match="padding"):
        ConvGeometry.of_transposed(nn.ConvTranspose2d(4, 4, 3, padding=3))


class Decoder(nn.Module):
    """A stem, two transposed convs (stride 2 with output_padding; stride 1) and a head."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.up = nn.ConvTranspose2d(24, 20, 3, stride=2, padding=1, output_padding=1)
        self.same = nn.ConvTranspose2d(20, 36, 3, padding=1, groups=groups)
        self.head = nn.Conv2d(36, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.same(torch.relu(self.up(self.stem(x))))))


@pytest.mark.parametrize("method", ["tile", "simd", "unstructured"])
def test_transposed_convs_are_pruned_in_output_channel_blocks(method):
    torch.manual_seed(0)
    model = Decoder().eval()
    x = torch.randn(2, 3, 5, 7)
    result = gp.prune(model, method, 0.5, target=SMALL, example_inputs=(x,))
    assert [lay.name for lay in result.plan] == ["up", "same"]
    assert {s.name for s in result.skipped} == {"stem", "head"}
    lay = next(r for r in result.layers if r.name == "up")
    assert lay.shape == (20, 24 * 9) and lay.flops_dense == 2 * 20 * 216 * 5 * 7
    assert result.plan["up"].kind == "conv" and result.plan["up"].geometry is None
    for name in ("up", "same"):
        view = TransposedConv(getattr(model, name))
        mask = gemm_view(gp.get_mask(view))  # the pruner's [C_out, C_in * kh * kw]
        res = next(r for r in result.layers if r.name == name)
        assert 1 - mask.float().mean().item() == pytest.approx(res.sparsity)
        assert res.sparsity == pytest.approx(0.5, abs=0.08)
        if method == "tile":  # whole 16x16 blocks of the Conv2d view (ragged edges included)
            bm, bk = res.block
            for i in range(0, mask.shape[0], bm):
                for j in range(0, mask.shape[1], bk):
                    tile = mask[i:i + bm, j:j + bk]
                    assert bool(tile.all()) or not bool(tile.any())
        stored = gp.get_mask(getattr(model, name))  # the layer's own [C_in, C_out, kh, kw]
        assert torch.equal(stored, transposed_layout(gp.get_mask(view), 1))
        weight = getattr(model, name).weight  # what the forward reads: exact zeros
        assert bool((weight[~stored] == 0).all()) and bool((weight[stored] != 0).all())


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("groups", [1, 2])
def test_compiled_decoder_equals_the_masked_model(backend, groups):
    torch.manual_seed(0)
    model = Decoder(groups).eval()
    x = torch.randn(2, 3, 5, 7)
    gp.prune(model, "tile", 0.5, target=SMALL, example_inputs=(x,))
    with pytest.warns(UserWarning, match="stride"):
        out = compile(model, backend=backend)
    report = out.gpuprune_compile
    assert [lay.name for lay in report.layers] == ["same"]
    dense = {d.name: d.reason for d in report.dense}
    assert "stride (2, 2)" in dense["up"] and "zeros stuffed" in dense["up"]
    assert "left dense: up: ConvTranspose2d with stride (2, 2)" in report.summary()
    assert isinstance(out.same, SkipGroupedConv2d if groups > 1 else SkipConv2d)
    assert isinstance(out.up, nn.ConvTranspose2d)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


def test_transposed_conv_round_trips_through_a_file(tmp_path):
    torch.manual_seed(0)
    model = Decoder().eval()
    x = torch.randn(1, 3, 5, 7)
    gp.prune(model, "simd", 0.5, target=SMALL, example_inputs=(x,))
    gp.save_pruned(tmp_path / "d.safetensors", model)
    loaded, plan, _ = gp.load(tmp_path / "d.safetensors", model=Decoder())
    assert plan.names == ["up", "same"]
    for name in ("up", "same"):
        assert torch.equal(gp.get_mask(getattr(loaded, name)), gp.get_mask(getattr(model, name)))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@settings(max_examples=20, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 3]), cin_g=st.integers(1, 6), cout_g=st.integers(1, 6),
    kh=st.integers(1, 4), kw=st.integers(1, 4), dh=st.integers(1, 2), dw=st.integers(1, 2),
    h=st.integers(1, 7), w=st.integers(1, 7), data=st.data(),
)  # fmt: skip
def test_random_stride_one_transposed_convs_compile_exactly(groups, cin_g, cout_g, kh, kw, dh, dw,
                                                             h, w, data):  # fmt: skip
    ph = data.draw(st.integers(0, dh * (kh - 1)))
    pw = data.draw(st.integers(0, dw * (kw - 1)))
    assume(h - 2 * ph + dh * (kh - 1) >= 1 and w - 2 * pw + dw * (kw - 1) >= 1)  # torch's rule
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin_g * groups, cout_g * groups, (kh, kw), padding=(ph, pw),
                               dilation=(dh, dw), groups=groups, bias=bool(h % 2))  # fmt: skip
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) > 0.5)  # zeros the kernel may skip
    model = nn.Sequential(layer).eval()
    with warnings.catch_warnings():  # group GEMMs under one block stay dense, said aloud
        warnings.simplefilter("ignore")
        out = compile(model, SMALL, backend="reference", kernels="tile")
    if groups == 1:  # (compiled as asked even without a whole zero block)
        assert isinstance(out[0], SkipConv2d)
    else:
        dense = [d.reason for d in out.gpuprune_compile.dense]
        assert isinstance(out[0], SkipGroupedConv2d) or "smaller than one" in dense[0]
    x = torch.randn(2, cin_g * groups, h, w)
    with torch.no_grad():
        torch.testing.assert_close(out(x), layer(x), rtol=1e-5, atol=1e-5)


def test_taylor_importance_and_sensitivity_trials_see_the_transposed_conv():
    torch.manual_seed(0)
    model = Decoder().eval()
    batches = [(torch.randn(2, 3, 5, 7), torch.randn(2, 4, 10, 14)) for _ in range(2)]
    pruner = gp.Pruner(model, "unstructured", importance="taylor", allocation="sensitivity",
                       example_inputs=batches[0][0])  # fmt: skip
    loss = F.mse_loss
    grad = torch.autograd.grad(loss(model(batches[0][0]), batches[0][1]), model.up.weight)[0]
    imps = pruner.importances(batches[:1], loss)
    want = gemm_view(conv_layout((grad * model.up.weight).abs().detach(), 1))
    torch.testing.assert_close(imps["up"], want)  # the gradient, in the Conv2d view
    pruner.apply(0.5, data=batches, loss_fn=loss)
    evaluate = pruner._evaluator(batches, loss)
    base = evaluate(None, None)
    assert evaluate("up", torch.zeros(20, 216, dtype=torch.bool)) != base  # the trial applies
    assert evaluate(None, None) == base  # and is undone
    for name in ("up", "same"):
        stored = gp.get_mask(getattr(model, name))
        original = getattr(model, name).parametrizations.weight.original
        assert torch.equal(original != 0, stored)  # trials zeroed nothing they did not keep
