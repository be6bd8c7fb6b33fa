"""Channel permutation before block pruning: same function, more importance kept, links named."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_helpers import SMALL, spec
from torch import nn

import gpuprune.prune as gp
from gpuprune.errors import UserError
from gpuprune.prune.methods import PruneMethod, SSLPruning, TilePruning, get_method
from gpuprune.prune.permute import (
    _block_sums,
    _Side,
    apply_order,
    channel_links,
    search_order,
    selection_of,
)


def _net(width: int = 40, flat_hw: int = 4) -> nn.Module:
    """conv-bn-relu-pool chains, a flatten into a Linear (4 features per channel), a BN1d head."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(width * flat_hw, 48), nn.BatchNorm1d(48), nn.ReLU(),
        nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10),
    )  # fmt: skip
    for m in net.modules():  # batch norms with real statistics, so a wrong move shows
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("method", ["tile", "simd", "simd-balanced"])
def test_same_function_and_never_less_kept(method: str) -> None:
    net = _net()
    x = torch.randn(4, 3, 8, 8)
    before = net(x)
    pruner = gp.Pruner(net, method, target=SMALL, input_size=(3, 8, 8))
    result = pruner.permute(0.75)
    torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)
    assert result.links and any(lo.swaps for lo in result.links)
    summary = result.summary()
    for layer, kept in summary["kept_after"].items():
        assert kept >= summary["kept_before"][layer] - 1e-9, layer
    assert sum(summary["kept_after"].values()) > sum(summary["kept_before"].values())
    # the pruned model it leads to is an ordinary pruned model; the result carries the summary
    out = pruner.apply(0.75)
    assert out.permutation == summary
    assert out.to_dict()["permutation"]["swaps"] == summary["swaps"]


def test_links_found_and_fixed_ones_named() -> None:
    links, fixed = channel_links(_net())
    pairs = {(lk.producer, lk.consumer, lk.carriers, lk.spread) for lk in links}
    assert ("0", "3", ("1",), 1) in pairs
    assert ("3", "7", ("4",), 1) in pairs  # through the max pool
    assert ("7", "12", ("8",), 4) in pairs  # through the adaptive pool and the flatten
    assert ("12", "15", ("13",), 1) in pairs
    assert fixed == {"17": "its output is the model's output"}


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.ReLU()
        self.c = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = self.b(self.act(y)) + y  # y is read twice: its channels are tied to the add
        return self.c(self.act(self.dw(z)))  # act is reused


def test_tied_channels_are_named_with_their_reason() -> None:
    links, fixed = channel_links(_Residual())
    assert links == []
    assert "read by 2 operations" in fixed["a"]
    assert "reaches add" in fixed["b"]
    assert "grouped convolution" in fixed["dw"]
    assert fixed["c"] == "its output is the model's output"


def test_grouped_readers_and_other_convs_are_named() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4),
                        nn.Flatten(2), nn.Conv1d(8, 4, 1))  # fmt: skip
    links, fixed = channel_links(net)
    assert links == []
    assert fixed["0"] == "its reader 2 is a grouped convolution (groups=4)"
    assert "grouped convolution (groups=4): its channels" in fixed["2"]
    assert fixed["4"] == "a Conv1d: channel order is searched for Conv2d and Linear layers"


def test_untraceable_model_names_every_layer() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) if x.sum() > 0 else x

    links, fixed = channel_links(Branchy())
    assert links == [] and set(fixed) == {"a", "b"}
    assert all("torch.fx" in why for why in fixed.values())


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(3, 21), rows=st.integers(2, 19), width=st.sampled_from([1, 4, 9]),
    block=st.tuples(st.integers(1, 6), st.integers(1, 7)), seed=st.integers(0, 2**16),
    taps=st.booleans(),
)  # fmt: skip
def test_block_sums_follow_the_swaps(channels: int, rows: int, width: int,
                                     block: tuple[int, int], seed: int, taps: bool
                                     ) -> None:  # fmt: skip
    """The sums the search updates in place equal the block sums of the reordered matrices, and
    its value is exactly the importance kept by the top blocks (awkward, ragged shapes). The
    consumer's channels are adjacent column spans (a Linear after a flatten) or, with ``taps``,
    one column per tap, ``channels`` apart (a conv's K order (kh, kw, c_in))."""
    gen = torch.Generator().manual_seed(seed)
    prod = torch.rand(channels, 11, generator=gen) ** 3  # rows are the channels
    cons = torch.rand(rows, channels * width, generator=gen) ** 3
    sides = [_Side(prod, block, 1, True, channels, False),
             _Side(cons, block, 2, False, channels, False, width if taps else 1)]  # fmt: skip
    for s in sides:
        s.keep = max(1, min(s.keep, s.gm * s.gk))
    order, _ = search_order(sides, channels, passes=2)
    m = cons.shape[0]
    if taps:
        moved_cons = cons.view(m, width, channels)[:, :, order].reshape(m, -1)
    else:
        moved_cons = cons.view(m, channels, width)[:, order].reshape(m, -1)
    moved = [prod[order], moved_cons]
    for s, x in zip(sides, moved, strict=True):
        want = _block_sums(x.double(), block)
        torch.testing.assert_close(s.sums, want, rtol=1e-9, atol=1e-9)


def test_value_is_the_masks_kept_fraction() -> None:
    gen = torch.Generator().manual_seed(3)
    imp = torch.rand(32, 48, generator=gen)
    layer = spec(32, 48)
    method = TilePruning()
    mask = method.mask(imp, 0.75, layer)
    keep = int(_block_sums(mask.double(), (16, 16)).gt(0).sum())
    side = _Side(imp, (16, 16), keep, True, 32, False)
    kept = float((imp.double() * mask).sum() / imp.double().sum())
    assert float(side.value(side.sums[None])[0]) == pytest.approx(kept, rel=1e-12)


def test_search_gathers_interleaved_rows() -> None:
    """Rows alternate large and small: the order found puts the large ones in one block."""
    imp = torch.ones(8, 4)
    imp[::2] = 10.0
    side = _Side(imp, (4, 4), 1, True, 8, False)  # keep one of two row blocks
    order, swaps = search_order([side], 8)
    assert swaps > 0
    assert float(side.value(side.sums[None])[0]) == pytest.approx(40 / 44)
    assert sorted(order[:4].tolist()) == [0, 2, 4, 6] or sorted(order[4:].tolist()) == [0, 2, 4, 6]


def test_apply_order_moves_the_linear_spread() -> None:
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    links, _ = channel_links(net)
    link = next(lk for lk in links if lk.spread == 4)
    apply_order(net, link, torch.randperm(link.channels))
    torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_refused_after_pruning_and_for_methods_it_does_not_fit() -> None:
    net = _net()
    pruner = gp.Pruner(net, "tile", target=SMALL, input_size=(3, 8, 8))
    pruner.apply(0.5)
    with pytest.raises(UserError, match="already pruned"):
        pruner.permute(0.5)
    nm = gp.Pruner(_net(), "nm", input_size=(3, 8, 8))
    with pytest.raises(UserError, match="not searched"):
        nm.permute(0.5)


def test_a_mask_of_its_own_is_not_searched_unless_it_says_how() -> None:
    class Mine(TilePruning):
        name = "mine"

        def mask(self, importance, sparsity, layer):  # type: ignore[override]
            return super().mask(importance, sparsity, layer)

    class MySsl(SSLPruning):  # inherits SSL's declared rule, but masks its own way
        name = "my-ssl"

        def mask(self, importance, sparsity, layer):  # type: ignore[override]
            return super().mask(importance, sparsity, layer)

    assert selection_of(Mine()) is None
    assert selection_of(MySsl()) is None
    assert selection_of(get_method("ssl")) == "blocks"  # its own mask, its rule declared
    assert selection_of(get_method("simd-balanced")) == "per-row"
    assert selection_of(get_method("tile")) == "blocks"
    assert PruneMethod.selection == "blocks"


def test_prune_function_permutes_first() -> None:
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    dense = net(x)
    result = gp.prune(net, "tile", 0.75, target=SMALL, input_size=(3, 8, 8), permute=True)
    assert result.permutation is not None and result.permutation["swaps"] > 0
    gp.finalize(net)
    assert not torch.allclose(net(x), dense)  # pruned, but through the reordered model


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(2, 40), bm=st.integers(1, 5), k=st.integers(1, 30),
       bk=st.integers(1, 4), per_row=st.booleans(), keep=st.integers(1, 60),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_exact_on_large_grids_ranks_only_what_can_change(rows: int, bm: int, k: int, bk: int,
                                                         per_row: bool, keep: int,
                                                         seed: int) -> None:  # fmt: skip
    """The windowed ranking of two changed rows equals ranking the whole candidate grid."""
    import gpuprune.prune.permute as permute

    gen = torch.Generator().manual_seed(seed)
    imp = torch.rand(rows, k, generator=gen) ** 4
    gm, gk = -(-rows // bm), -(-k // bk)
    keep = min(keep, gk if per_row else gm * gk)
    side = _Side(imp, (bm, bk), keep, True, rows, per_row)
    js = torch.tensor([j for j in range(rows) if j != 0][:6])
    cj = js.clone()
    want = side.value(side.candidates(0, js, 0, cj))
    old, permute.SMALL_GRID = permute.SMALL_GRID, 0
    try:
        got = side.exact(0, js, 0, cj)
    finally:
        permute.SMALL_GRID = old
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_an_order_the_real_mask_does_not_gain_from_is_undone(monkeypatch) -> None:
    """The search holds block counts fixed; if the mask itself keeps less, the link goes back."""
    import gpuprune.prune.permute as permute

    net = _net()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    phase = {"after": False}  # every link reads worse after its search than before
    search = permute.search_order

    def searched(*args, **kwargs):
        phase["after"] = True
        return search(*args, **kwargs)

    def kept(*args):
        return 0.5 if phase["after"] else 1.0

    def link_start(*args, **kwargs):
        phase["after"] = False
        return side(*args, **kwargs)

    side = permute._side
    monkeypatch.setattr(permute, "search_order", searched)
    monkeypatch.setattr(permute, "_side", link_start)
    monkeypatch.setattr(permute, "_kept", kept)
    result = gp.Pruner(net, "tile", target=SMALL, input_size=(3, 8, 8)).permute(0.75)
    assert result.links and all(lo.swaps == 0 for lo in result.links)
    assert all(lo.order == sorted(lo.order) for lo in result.links)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
