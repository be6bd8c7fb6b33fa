"""Block OBS reconstruction against a brute-force solution computed directly with least squares."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from prune_helpers import SMALL, spec
from torch import nn

import gpuprune.prune as gp
from gpuprune.errors import UserError
from gpuprune.gemm import expand_blocks, gemm_view
from gpuprune.prune import obs
from gpuprune.prune.methods import get_method, real_sizes, select_lowest
from gpuprune.prune.obs import (
    DAMP,
    _columns,
    _trace,
    damped,
    greedy_trace,
    least_squares,
    obs_layer,
    pattern_for,
)

# ---- brute force: every cost is a least-squares fit on the (damped) inputs, nothing downdated ----


def _augmented(x: torch.Tensor) -> torch.Tensor:
    """[K, N + K] inputs whose Gram matrix is the damped Hessian X X^T + damp * mean(diag) I."""
    h = x @ x.T
    lam = DAMP * float(h.diagonal().mean())
    return torch.cat([x, lam**0.5 * torch.eye(x.shape[0], dtype=x.dtype)], dim=1)


def _fit(w: torch.Tensor, xa: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rows ``w`` refitted on the kept columns only: (weights, summed squared output error)."""
    target = w @ xa  # [R, N]
    out = torch.zeros_like(w)
    if keep.any():
        sol = torch.linalg.lstsq(xa[keep].T, target.T).solution  # [kept, R]
        out[:, keep] = sol.T
    return out, float(((target - out @ xa) ** 2).sum())


def brute_force(w, x, rows, k, rule, sparsity, count=0, bank=0, bank_prune=()):
    """Greedy OBS with every step's cost computed from scratch: (keep-mask, refitted weights)."""
    w, xa = w.double(), _augmented(x.double())
    m, kk = w.shape
    groups, units = -(-m // rows), -(-kk // k)
    sizes = real_sizes((m, kk), (rows, k))
    orders, costs = [], []
    rounds = {"global": units, "per-group": count, "banks": sum(bank_prune)}[rule]
    for g in range(groups):
        wg = w[g * rows : (g + 1) * rows]
        removed: list[int] = []
        base = 0.0
        order, cost = [], []
        for _ in range(rounds):
            best = None
            for u in range(units):
                if u in removed:
                    continue
                if rule == "banks" and sum(v // bank == u // bank for v in removed) >= bank_prune[
                    u // bank
                ]:
                    continue
                keep = torch.ones(kk, dtype=torch.bool)
                for v in [*removed, u]:
                    keep[v * k : (v + 1) * k] = False
                err = _fit(wg, xa, keep)[1] - base
                if best is None or err / float(sizes[g, u]) < best[0]:
                    best = (err / float(sizes[g, u]), u, err)
            removed.append(best[1])
            order.append(best[1])
            cost.append(best[2])
            base += best[2]
        orders.append(order)
        costs.append(cost)
    order = torch.tensor(orders, dtype=torch.long).reshape(groups, rounds)
    cost = torch.tensor(costs, dtype=torch.float64).reshape(groups, rounds)
    take = torch.ones(groups, rounds, dtype=torch.bool)
    if rule == "global":
        size = sizes.gather(1, order)
        take = ~select_lowest((cost / size).cummax(dim=1).values, size, sparsity)
    removed = torch.zeros(groups, units, dtype=torch.bool).scatter_(1, order, take)
    keep = expand_blocks(~removed, (rows, k), (m, kk))
    out = torch.stack([_fit(w[i : i + 1], xa, keep[i])[0][0] for i in range(m)])
    return keep, out


def _inputs(k: int, n: int) -> torch.Tensor:
    # correlated inputs, as real activations are: OBS then differs from magnitude
    mix = torch.randn(k, k, dtype=torch.float64) * 0.5 + torch.eye(k, dtype=torch.float64)
    return mix @ torch.randn(k, n, dtype=torch.float64)


CASES = [
    ("tile", (32, 72), 0.5, {}),  # 16x16 tiles, ragged last K block of 8
    ("tile", (40, 40), 0.75, {}),  # ragged rows and columns
    ("simd", (16, 12), 0.5, {}),  # 8x1 SIMD vectors
    ("simd-balanced", (16, 13), 0.75, {}),
    ("unstructured", (5, 10), 0.6, {}),
    ("nm", (4, 10), 0.5, {}),  # 2:4, ragged last bank of 2 keeps both
    ("nm", (3, 9), 0.0, {"n": 1, "m": 3}),
]


@pytest.mark.parametrize(("method", "shape", "sparsity", "options"), CASES)
def test_matches_brute_force(method, shape, sparsity, options):
    m, kk = shape
    x = _inputs(kk, 3 * kk)
    w = torch.randn(m, kk)
    pattern = pattern_for(get_method(method, **options), spec(m, kk, SMALL), sparsity)
    keep, new = obs_layer(w, x @ x.T, pattern, sparsity)
    ref_keep, ref = brute_force(w, x, pattern.rows, pattern.k, pattern.rule, sparsity,
                                pattern.count, pattern.bank, pattern.bank_prune)  # fmt: skip
    assert torch.equal(keep, ref_keep)
    assert torch.allclose(new.double(), ref, atol=1e-4, rtol=0)
    assert bool((new[~keep] == 0).all())
    if method not in ("nm", "simd-balanced"):  # quantised counts aside, the sparsity is met
        got = 1 - keep.float().mean().item()
        largest = pattern.rows * pattern.k / (m * kk)
        assert abs(got - sparsity) <= largest / 2 + 1e-6


@pytest.mark.parametrize(("method", "shape"), [("nm", (6, 22)), ("unstructured", (6, 20))])
def test_several_units_per_round_keep_counts_and_exact_weights(method, shape):
    m, kk = shape
    x = _inputs(kk, 3 * kk)
    w = torch.randn(m, kk)
    pattern = pattern_for(get_method(method), spec(m, kk, SMALL), 0.5)
    keep, new = obs_layer(w, x @ x.T, pattern, 0.5, per_round=3)
    xa = _augmented(x)
    ref = torch.stack([_fit(w[i : i + 1].double(), xa, keep[i])[0][0] for i in range(m)])
    assert torch.allclose(new.double(), ref, atol=1e-4, rtol=0)
    if method == "nm":  # 2 of every 4, and both of the ragged last pair
        banks = keep[:, :20].reshape(m, 5, 4).sum(-1)
        assert bool((banks == 2).all()) and bool(keep[:, 20:].all())
    else:
        assert int((~keep).sum()) == m * kk // 2


@pytest.mark.parametrize(("method", "shape", "sparsity"),
                         [("unstructured", (12, 40), 0.3), ("simd", (24, 30), 0.6),
                          ("tile", (40, 72), 0.5)])  # fmt: skip
def test_early_stop_and_factor_refit_match_full_traces_and_a_direct_solve(
    method, shape, sparsity, monkeypatch
):
    torch.manual_seed(3)
    m, kk = shape
    x = _inputs(kk, 3 * kk)
    w = torch.randn(m, kk)
    pattern = pattern_for(get_method(method), spec(m, kk, SMALL), sparsity)
    rows, k = pattern.rows, pattern.k
    units = -(-kk // k)
    keep, new = obs_layer(w, x @ x.T, pattern, sparsity, per_round=2)  # cuts inside rounds too
    h = damped(x @ x.T)
    assert not bool(torch.isfinite(_trace(w, h, pattern, units, 2, sparsity).cost).all())
    order, cost = greedy_trace(w, h, pattern, units, per_round=2)  # whole traces
    size = real_sizes((m, kk), (rows, k)).gather(1, order)
    take = ~select_lowest((cost / size).cummax(dim=1).values, size, sparsity)
    removed = torch.zeros(order.shape, dtype=torch.bool).scatter_(1, order, take)
    assert torch.equal(keep, expand_blocks(~removed, (rows, k), (m, kk)))
    assert torch.allclose(new.double(), least_squares(w, h, keep), atol=1e-6, rtol=0)
    monkeypatch.setattr(obs, "MEMORY_BYTES", 1)  # one group per chunk: whole traces, a solve
    keep_chunked, new_chunked = obs_layer(w, x @ x.T, pattern, sparsity, per_round=2)
    assert torch.equal(keep_chunked, keep)
    assert torch.allclose(new_chunked, new, atol=1e-6, rtol=0)


def test_reconstruction_beats_magnitude_on_the_layer_error():
    m, kk = 32, 64
    x = _inputs(kk, 4 * kk).float()
    w = torch.randn(m, kk)
    h = (x @ x.T).double()
    err = {}
    for name, importance in (("magnitude", None), ("obs", "obs")):
        if importance is None:
            keep = get_method("tile").mask(w.abs(), 0.5, spec(m, kk, SMALL))
            new = w * keep
        else:
            keep, new = obs_layer(w, h, pattern_for(get_method("tile"), spec(m, kk, SMALL), 0.5),
                                  0.5)  # fmt: skip
        err[name] = float(((w - new) @ x).square().sum())
    assert err["obs"] < 0.8 * err["magnitude"]


def test_conv_columns_are_the_gemm_view_input():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=1, bias=False, padding_mode="reflect")
    x = torch.randn(2, 3, 9, 7)
    out = conv(x)  # [2, 5, 5, 4]
    cols = _columns(conv, x)  # [2*5*4, 27]
    got = (cols @ gemm_view(conv.weight).T).reshape(2, -1, 5).transpose(1, 2).reshape(out.shape)
    assert torch.allclose(got, out, atol=1e-5)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip


@pytest.mark.parametrize("method", ["tile", "simd", "unstructured", "nm"])
def test_prune_api_obs_lowers_output_error(method):
    torch.manual_seed(1)
    dense = _model()
    data = [(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    x = torch.cat([b[0] for b in data])
    errors = {}
    for importance in ("magnitude", "obs"):
        model = _model()
        model.load_state_dict(dense.state_dict())
        result = gp.prune(model, method, 0.5, target=SMALL, importance=importance, data=data,
                          input_size=(3, 8, 8))  # fmt: skip
        assert abs(result.sparsity - 0.5) < 0.1
        with torch.no_grad():
            errors[importance] = float((model(x) - dense(x)).square().mean())
        for mod in gp.masked_layers(model).values():
            assert bool((mod.weight[~gp.get_mask(mod)] == 0).all())
    assert errors["obs"] < errors["magnitude"]


def test_reconstruct_keeps_the_magnitude_mask():
    torch.manual_seed(2)
    dense = _model()
    data = [torch.randn(16, 3, 8, 8) for _ in range(2)]  # unlabeled inputs are enough
    plain, refit = _model(), _model()
    plain.load_state_dict(dense.state_dict())
    refit.load_state_dict(dense.state_dict())
    gp.prune(plain, "tile", 0.5, target=SMALL, input_size=(3, 8, 8))
    gp.prune(refit, "tile", 0.5, target=SMALL, input_size=(3, 8, 8), data=data, reconstruct=True)
    for name, mod in gp.masked_layers(plain).items():
        assert torch.equal(gp.get_mask(mod), gp.get_mask(gp.masked_layers(refit)[name]))
    x = torch.cat(data)
    with torch.no_grad():
        err = [float((m(x) - dense(x)).square().mean()) for m in (plain, refit)]
    assert err[1] < err[0]


def test_obs_needs_data_and_a_supported_method():
    with pytest.raises(UserError, match="calibration data"):
        gp.prune(_model(), "tile", 0.5, target=SMALL, importance="obs", input_size=(3, 8, 8))
    with pytest.raises(UserError, match="does not support method 'filter'"):
        gp.prune(_model(), "filter", 0.5, importance="obs", input_size=(3, 8, 8),
                 data=[torch.randn(4, 3, 8, 8)])  # fmt: skip


def test_obs_refuses_grouped_convs_by_name():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=2),
                          nn.Flatten(), nn.Linear(32 * 64, 4))  # fmt: skip
    with pytest.raises(UserError, match=r"layer 1: obs reconstruction handles groups=1"):
        gp.prune(model, "tile", 0.5, target=SMALL, importance="obs", input_size=(3, 8, 8),
                 exclude_first_last=False, skip_small=True,
                 data=[torch.randn(4, 3, 8, 8)])  # fmt: skip


def test_bn_recalibration_uses_train_mode_statistics_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten())
    weights = {k: v.clone() for k, v in model.state_dict().items() if "weight" in k or "bias" in k}
    x = torch.randn(32, 3, 4, 4) * 3 + 1
    model.eval()
    gp.recalibrate_bn(model, [x[:16], (x[16:], None)], batches=2)
    assert not model.training
    bn = model[1]
    with torch.no_grad():
        y = F.conv2d(x, model[0].weight, model[0].bias)
    assert torch.allclose(bn.running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1  # restored
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k])
