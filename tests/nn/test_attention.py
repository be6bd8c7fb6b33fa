"""nn.MultiheadAttention's input projection: pruned by every method as three GEMMs (q, k, v),
saved and loaded packed, and compiled into a SkipMultiheadAttention equal to the masked model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from small_target import SMALL, backends
from torch import nn

import gpuprune.prune as gp
from gpuprune.errors import UserError
from gpuprune.gemm import BareWeight, find_layer
from gpuprune.nn import SkipLinear, compile
from gpuprune.nn.attention import SkipMultiheadAttention


class Encoder(nn.Module):
    """Linear in, a 2-layer nn.TransformerEncoder, Linear out."""

    def __init__(self, batch_first: bool, dim: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(8, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(self.inp(x), src_key_padding_mask=mask))


class Cross(nn.Module):
    """Cross-attention with kdim/vdim != embed_dim: q_proj/k_proj/v_proj_weight, three GEMMs."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, kdim=16, vdim=48, batch_first=True, **options)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None) -> torch.Tensor:
        q = self.inp(x)
        mem = mem if mem is not None else torch.ones(x.shape[0], 3, 64)
        return self.head(self.attn(q, mem[..., :16], mem[..., 16:], need_weights=False)[0])


class SelfAttention(nn.Module):
    """Sequence-first self-attention between two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.attn, self.head = nn.Linear(32, 32), nn.MultiheadAttention(32, 4), \
            nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inp(x)
        return self.head(self.attn(y, y, y)[0])


def python_path(model: nn.Module, *args) -> torch.Tensor:
    """The model on an input that needs grad: nn.TransformerEncoderLayer's fused fast path
    (which reads dense weights) is off, so compiled layers run their kernels."""
    with torch.enable_grad():
        x = args[0].clone().requires_grad_(True)
        return model(x, *args[1:]).detach()


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_compiled_equals_masked_model(batch_first, backend):
    torch.manual_seed(0)
    model = Encoder(batch_first).eval()
    x = torch.randn(3, 6, 8) if batch_first else torch.randn(6, 3, 8)
    result = gp.prune(model, "tile", 0.5, target=SMALL, example_inputs=(x,))
    bare = "encoder.layers.0.self_attn.in_proj_weight"
    assert bare in result.plan and result.plan[bare].gemm == (96, 32)
    lay = next(r for r in result.layers if r.name == bare)
    assert lay.flops_dense == 2 * 96 * 32 * 6  # N per sample: the sequence length
    mask = gp.get_mask(find_layer(model, bare))
    for part in mask.chunk(3):  # q, k and v are masked each to the sparsity, in whole blocks
        assert part.float().mean() == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="fast path"):
        out = compile(model, backend=backend)
    report = out.gpuprune_compile
    assert {bare, "encoder.layers.1.self_attn.out_proj"} <= {lay.name for lay in report.layers}
    assert all("proj" not in d.name for d in report.dense)
    attn = out.encoder.layers[0].self_attn
    assert isinstance(attn, SkipMultiheadAttention) and attn.batch_first == batch_first
    calls = []
    attn.q_proj.register_forward_hook(lambda *_: calls.append(1))
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True  # the second sample is 4 long
    for kpm in (None, pad):
        want = python_path(model, x, kpm)
        torch.testing.assert_close(python_path(out, x, kpm), want, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # the fused fast path reads the dense in_proj_weight: same result
            torch.testing.assert_close(out(x, kpm), model(x, kpm), rtol=1e-5, atol=1e-5)
    assert len(calls) == 4  # a hook in a layer turns its fast path off: the kernel always ran


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's, on a case
def test_direct_calls_match_multihead_attention_options():
    torch.manual_seed(0)
    model = SelfAttention().eval()
    gp.prune(model, "unstructured", 0.5, example_inputs=(torch.randn(5, 2, 32),))
    mha = model.attn
    out = compile(model, SMALL, backend="reference", kernels="tile")
    fast = out.attn
    assert isinstance(fast, SkipMultiheadAttention) and not fast.batch_first
    q, k, v = torch.randn(5, 2, 32), torch.randn(7, 2, 32), torch.randn(7, 2, 32)
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    float_mask = torch.randn(2 * 4, 5, 7)
    pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    cases = [
        {},
        {"need_weights": False},
        {"attn_mask": causal, "average_attn_weights": False},
        {"attn_mask": float_mask, "key_padding_mask": pad},
        {"attn_mask": causal, "key_padding_mask": pad, "need_weights": False},
        {"attn_mask": causal, "is_causal": True, "need_weights": False},
    ]
    with torch.no_grad():
        for kwargs in cases:
            want, want_w = mha(q, k, v, **kwargs)
            got, got_w = fast(q, k, v, **kwargs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=str(kwargs))
            if want_w is None:
                assert got_w is None
            else:
                torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)
        got, w = fast(q[:, 0], k[:, 0], v[:, 0])  # unbatched [L, E]
        want, want_w = mha(q[:, 0], k[:, 0], v[:, 0])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="compiled model cannot be trained"):
        out.train()


def test_cross_attention_with_kdim_vdim_prunes_three_weights_and_compiles():
    torch.manual_seed(0)
    model = Cross().eval()
    x = torch.randn(2, 4, 8)
    result = gp.prune(model, "tile", 0.5, target=SMALL, example_inputs=(x,))
    shapes = {lay.name: lay.gemm for lay in result.plan}
    assert shapes["attn.q_proj_weight"] == (32, 32)
    assert shapes["attn.k_proj_weight"] == (32, 16) and shapes["attn.v_proj_weight"] == (32, 48)
    out = compile(model, backend="reference")
    fast = out.attn
    assert isinstance(fast, SkipMultiheadAttention) and not fast._qkv_same_embed_dim
    assert fast.in_proj_weight is None and isinstance(fast.k_proj, SkipLinear)
    torch.testing.assert_close(fast.v_proj_weight, model.attn.v_proj_weight.detach())
    mem = torch.randn(2, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(out(x, mem), model(x, mem), rtol=1e-5, atol=1e-5)


def test_attention_options_the_skip_attention_lacks_stay_dense_with_the_reason():
    torch.manual_seed(0)
    model = Cross(add_bias_kv=True).eval()
    x = torch.randn(2, 4, 8)
    result = gp.prune(model, "unstructured", 0.5, example_inputs=(x,))
    assert "attn.q_proj_weight" in result.plan  # pruned: the masked weight is what MHA reads
    with pytest.warns(UserWarning, match="add_bias_kv"):
        out = compile(model, SMALL, backend="reference", kernels="tile")
    dense = {d.name: d.reason for d in out.gpuprune_compile.dense}
    for name in ("attn.q_proj_weight", "attn.v_proj_weight", "attn.out_proj"):
        assert "add_bias_kv" in dense[name]
    assert isinstance(out.attn, nn.MultiheadAttention)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="add_bias_kv"):
        SkipMultiheadAttention.from_module(model.attn, *[nn.Linear(32, 32)] * 4)


def staircase(layer, channels: int) -> float:
    return float(-(-channels // 8))


@pytest.mark.parametrize("method", gp.METHODS.names())
def test_every_method_prunes_the_input_projection(method):
    torch.manual_seed(0)
    model = Encoder(batch_first=True).eval()
    x = torch.randn(2, 6, 8)
    options = {"latency": staircase} if method == "channel-perf" else {}
    result = gp.prune(model, method, 0.5, target=SMALL, example_inputs=(x,),
                      method_options=options)  # fmt: skip
    bare = "encoder.layers.1.self_attn.in_proj_weight"
    lay = next(r for r in result.layers if r.name == bare)
    assert 0.2 < lay.sparsity < 0.8, (method, lay.sparsity)
    layer = find_layer(model, bare)
    assert isinstance(layer, BareWeight)
    mask = gp.get_mask(layer)
    assert mask.shape == (96, 32) and 1 - mask.float().mean().item() == pytest.approx(lay.sparsity)
    weight = model.encoder.layers[1].self_attn.in_proj_weight  # what the forward reads
    assert bool((weight[~mask] == 0).all())
    with torch.no_grad():
        y = model(x)
    gp.finalize(model)
    assert not hasattr(model.encoder.layers[1].self_attn, "parametrizations")
    with torch.no_grad():
        assert torch.equal(model(x), y)


def test_save_and_load_round_trip_the_input_projection(tmp_path):
    torch.manual_seed(0)
    model = Encoder(batch_first=True).eval()
    x = torch.randn(2, 6, 8)
    gp.prune(model, "simd", 0.5, target=SMALL, example_inputs=(x,))
    path = tmp_path / "enc.safetensors"
    gp.save_pruned(path, model)
    fresh = Encoder(batch_first=True).eval()
    loaded, plan, _ = gp.load(path, model=fresh)
    bare = "encoder.layers.0.self_attn.in_proj_weight"
    assert bare in plan
    assert torch.equal(gp.get_mask(find_layer(loaded, bare)), gp.get_mask(find_layer(model, bare)))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.warns(UserWarning, match="fast path"):
        out = compile(loaded, backend="reference")
    assert isinstance(out.encoder.layers[0].self_attn, SkipMultiheadAttention)
    torch.testing.assert_close(python_path(out, x), python_path(model, x), rtol=1e-5, atol=1e-5)


class Holder(nn.Module):
    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, q, k, v, **kwargs):
        return self.attn(q, k, v, **kwargs)


@settings(max_examples=15, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), dim=st.integers(4, 12), n=st.integers(1, 3),
       tgt=st.integers(1, 5), src=st.integers(1, 6), batch_first=st.booleans(),
       bias=st.booleans(), need_weights=st.booleans())  # fmt: skip
def test_random_attentions_compile_exactly(heads, dim, n, tgt, src, batch_first, bias,
                                           need_weights):  # fmt: skip
    embed = heads * dim
    assume(embed >= 16)  # a projection holds at least one 16x16 block
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(embed, heads, bias=bias, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_weight.mul_(torch.rand_like(mha.in_proj_weight) > 0.5)
    out = compile(Holder(mha), SMALL, backend="reference", kernels="tile")
    assert isinstance(out.attn, SkipMultiheadAttention)
    shape = (lambda length: (n, length, embed)) if batch_first else (
        lambda length: (length, n, embed))  # fmt: skip
    q, kv = torch.randn(shape(tgt)), torch.randn(shape(src))
    pad = torch.zeros(n, src, dtype=torch.bool)
    pad[0, src - 1:] = src > 1  # one padded key in the first sample, when it has two
    with torch.no_grad():
        want, want_w = mha(q, kv, kv, key_padding_mask=pad, need_weights=need_weights)
        got, got_w = out(q, kv, kv, key_padding_mask=pad, need_weights=need_weights)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got_w is None) == (want_w is None)
    if want_w is not None:
        torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)
