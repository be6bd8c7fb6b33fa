"""Transformers: compiled Linear layers keep the ``weight``/``bias`` that attention code reads;
MultiheadAttention's input projection and out_proj are pruned and run on the skip kernels by a
SkipMultiheadAttention that keeps the dense ``in_proj_weight``/``out_proj.weight`` readable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpuprune.prune as gp
from gpuprune.arch import get_target
from gpuprune.nn import SkipLinear, compile
from gpuprune.nn.attention import SkipMultiheadAttention

POCL = get_target("cpu-pocl")


class Block(nn.Module):
    """A torchvision-style ViT block: MultiheadAttention, then an MLP of two Linears."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.block = Block(dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(self.block(x)).mean(dim=1))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vit_prunes_compiles_and_matches_the_masked_model(backend):
    from gpuprune.errors import UserError
    from gpuprune.kernels import get_backend

    try:
        get_backend(backend).check_available()
    except UserError as err:
        pytest.skip(err.problem)
    torch.manual_seed(0)
    model = TinyViT().eval()
    result = gp.prune(model, "tile", 0.75, target=POCL, skip_small=True,
                      input_size=(3, 16, 16))  # fmt: skip
    skipped = {s.name for s in result.skipped}
    for attn in ("block.attn", "encoder.layers.0.self_attn", "encoder.layers.1.self_attn"):
        assert f"{attn}.in_proj_weight" in result.plan and f"{attn}.in_proj_weight" not in skipped
        assert f"{attn}.out_proj" in result.plan
    lay = next(r for r in result.layers if r.name == "block.attn.in_proj_weight")
    assert lay.shape == (192, 64) and lay.sparsity == pytest.approx(0.75)
    with pytest.warns(UserWarning):
        out = compile(model, POCL, backend=backend)
    report = out.gpuprune_compile
    compiled = {lay.name for lay in report.layers}
    assert {"block.mlp.0", "block.mlp.2", "encoder.layers.0.linear1", "encoder.layers.1.linear2",
            "block.attn.in_proj_weight", "block.attn.out_proj",
            "encoder.layers.1.self_attn.in_proj_weight"} <= compiled  # fmt: skip
    assert not any("proj" in d.name for d in report.dense)
    assert "in_proj" not in report.summary().split("left dense", 1)[-1]
    assert any("fast path" in n for n in report.notes)
    attn = out.block.attn
    assert isinstance(attn, SkipMultiheadAttention) and isinstance(attn.q_proj, SkipLinear)
    assert isinstance(attn.out_proj, SkipLinear)
    torch.testing.assert_close(attn.in_proj_weight, model.block.attn.in_proj_weight.detach())
    torch.testing.assert_close(attn.in_proj_bias, model.block.attn.in_proj_bias.detach())
    torch.testing.assert_close(attn.out_proj.weight, model.block.attn.out_proj.weight.detach())
    lin = out.encoder.layers[0].linear1
    assert isinstance(lin, SkipLinear)
    torch.testing.assert_close(lin.weight, model.encoder.layers[0].linear1.weight.detach())
    assert lin.bias is not None and lin.weight.shape == (128, 64)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # nn.TransformerEncoderLayer's fused fast path reads .weight
        want = model(x)
        torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-4)
    calls = []
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj,
                 out.encoder.layers[1].self_attn.q_proj):  # fmt: skip
        proj.register_forward_hook(lambda *_: calls.append(1))
    torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-4)  # the Python path: kernels
    assert len(calls) == 5  # every projection ran its skip kernel
    report = gp.sparsity_report(model)
    row = next(line for line in report.splitlines() if "block.attn.in_proj_weight" in line)
    assert "192x64" in row and "yes" in row and "0.750" in row


def test_kernels_for_all_layers_run_attention_projections():
    torch.manual_seed(0)
    model = TinyViT().eval()
    with pytest.warns(UserWarning):  # nothing to skip in a dense model: run as dense, said
        out = compile(model, POCL, backend="reference", kernels="tile")
    names = {lay.name for lay in out.gpuprune_compile.layers}
    assert {"block.attn.out_proj", "block.attn.in_proj_weight"} <= names
    assert isinstance(out.block.attn, SkipMultiheadAttention)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-4)
