"""Layer-wise reconstruction: Optimal Brain Surgeon on whole blocks (OBC/SparseGPT family).

For one layer with GEMM weight ``W [M, K]`` and calibration inputs ``X [K, N]`` (im2col columns for
a conv), pruning minimises the layer's output error ``||W X - W' X||^2``. Rows are independent
given the mask, and each row's error is ``(w - w')^T H (w - w')`` with ``H = X X^T`` (damped).
Removing the columns ``S`` of a row optimally (all other columns free to move) costs
``w_S^T (Hinv_SS)^-1 w_S`` and moves the row by ``-Hinv[:, S] (Hinv_SS)^-1 w_S`` (Hassibi & Stork
1993; Frantar & Alistarh 2022). A block pattern shares one mask over ``rows`` rows (a tile's MWG,
a SIMD vector's R, 1 for unstructured and N:M), so the cost of a unit is the sum over those rows.

Per group of rows, units (``rows x k`` blocks) are removed greedily, cheapest first, downdating
``Hinv`` after each removal (the exact inverse of ``H`` on the columns still kept); the resulting
removal order and cost increments are the group's *trace*. How many units each group loses
depends on the method: one threshold over all groups of the layer (tile, simd, unstructured, on
the cost per removed weight, made non-decreasing along each trace), the same count in every group
(simd-balanced), or a count per bank of each row (nm, balanced). The kept weights are then set to
the exact least-squares optimum for the chosen mask. Layers go in forward order, each calibrated
on the outputs of the already-pruned layers before it. ``docs/design/pruning.md`` derives it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpuprune.errors import UserError
from gpuprune.gemm import expand_blocks, from_gemm, gemm_view
from gpuprune.prune.layers import LayerSpec
from gpuprune.prune.masks import get_mask, set_mask
from gpuprune.prune.methods import (
    BalancedPruning,
    PruneMethod,
    SimdBalancedPruning,
    SimdPruning,
    TilePruning,
    UnstructuredPruning,
    real_sizes,
    select_lowest,
)

DAMP = 0.01  # H += DAMP * mean(diag H) * I, as in OBC/SparseGPT: X X^T is often singular
MEMORY_BYTES = 256 << 20  # per-layer cap on the stacked per-group factors of the inverse Hessian
OBS_METHODS = ("tile", "simd", "simd-balanced", "unstructured", "nm", "balanced")


@dataclass(frozen=True)
class Pattern:
    """How a method's mask decomposes for OBS: groups of ``rows`` rows share a mask of units.

    ``rule``: ``global`` (one cost threshold over the layer), ``per-group`` (each group removes
    ``count`` units) or ``banks`` (each row removes ``bank_prune[b]`` units from bank ``b`` of
    ``bank`` consecutive units).
    """

    rows: int
    k: int
    rule: str
    count: int = 0
    bank: int = 0
    bank_prune: tuple[int, ...] = ()


def pattern_for(method: PruneMethod, layer: LayerSpec, sparsity: float) -> Pattern:
    """The OBS decomposition of ``method`` on ``layer`` at ``sparsity`` (UserError if none)."""
    rows, k = method.unit(layer)
    if isinstance(method, SimdBalancedPruning):
        units = -(-layer.shape[1] // k)
        return Pattern(rows, k, "per-group", count=units - max(1, round((1 - sparsity) * units)))
    if isinstance(method, TilePruning | SimdPruning | UnstructuredPruning):
        return Pattern(rows, k, "global")
    if isinstance(method, BalancedPruning):  # nm too: a bank is a group of m
        kk, b = layer.shape[1], method.bank_size(layer)
        sizes = [b] * (-(-kk // b) - 1) + [kk - b * (-(-kk // b) - 1)]
        kept = method.counts(sizes, sparsity)
        return Pattern(1, 1, "banks", bank=b, bank_prune=tuple(s - c for s, c in
                                                                   zip(sizes, kept, strict=True)))
    raise UserError(
        f"OBS reconstruction does not support method {method.name!r}",
        f"use one of: {', '.join(OBS_METHODS)}, or importance magnitude for this method",
    )


# ---- one layer ----------------------------------------------------------------------------------
def damped(hessian: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """``H + damp * mean(diag H) * I`` in float64 (the identity if H is all zero)."""
    h = hessian.double()
    mean = float(h.diagonal().mean())
    if not math.isfinite(mean):
        raise UserError("calibration activations are NaN or infinite",
                        "check the model and the calibration data")  # fmt: skip
    if mean <= 0:
        return torch.eye(h.shape[0], dtype=torch.float64)
    return h + damp * mean * torch.eye(h.shape[0], dtype=torch.float64)


def least_squares(weight: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Kept weights minimising ``(w - w')^T H (w - w')`` per row, pruned ones zero ([M, K]).

    Rows with the same mask share one Cholesky factorisation of ``H`` on their kept columns.
    """
    w, h = weight.double(), h.double()
    out = torch.zeros_like(w)
    patterns, which = torch.unique(keep, dim=0, return_inverse=True)
    k = w.shape[1]
    per = max(1, MEMORY_BYTES // (8 * k * k))
    for start in range(0, patterns.shape[0], per):
        pat = patterns[start : start + per]  # [P, K]
        both = pat[:, :, None] & pat[:, None, :]
        a = torch.where(both, h, 0.0) + torch.diag_embed((~pat).double())  # decoupled when pruned
        chol = torch.linalg.cholesky(a)
        for p in range(pat.shape[0]):
            rows = which == start + p
            rhs = (w[rows] @ h).T * pat[p, :, None]  # [K, rows]: (H w)_kept
            out[rows] = torch.cholesky_solve(rhs, chol[p]).T * pat[p]
    return out


def _pad(weight: torch.Tensor, hinv: torch.Tensor, rows: int, k: int):
    m, kk = weight.shape
    g, u = -(-m // rows), -(-kk // k)
    w = torch.zeros(g * rows, u * k, dtype=torch.float64)
    w[:m, :kk] = weight
    hi = torch.eye(u * k, dtype=torch.float64)  # padding columns: decoupled, weight 0
    hi[:kk, :kk] = hinv
    return w.view(g, rows, u * k), hi


ROUNDS = 48  # removal rounds per layer: each group removes ceil(units / ROUNDS) units a round


def _block_diag(hi: torch.Tensor, units: int, k: int) -> torch.Tensor:
    """[U, k, k] diagonal blocks of the [U*k, U*k] ``hi`` ([U*k] diagonal when k is 1)."""
    if k == 1:
        return hi.diagonal().clone()
    return hi.view(units, k, units, k).diagonal(dim1=0, dim2=2).permute(2, 0, 1).clone()


def _unit_costs(diag: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """[G, U] error increase of removing each unit alone: sum over rows of w_S^T Hinv_SS^-1 w_S.

    ``diag``: the current inverse's diagonal ([G, U] for k = 1) or its k x k blocks ([G, U, k, k]).
    """
    g, rows, _ = w.shape
    if k == 1:
        return w.square().sum(1) / diag
    ws = w.view(g, rows, -1, k)
    return torch.einsum("grua,guab,grub->gu", ws, torch.linalg.inv(diag), ws)


def _allowed_in_banks(score: torch.Tensor, order: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Candidates within their bank's quota: the cheapest ``quota - done`` units of each bank."""
    g, units = score.shape
    b, quota = pattern.bank, torch.tensor(pattern.bank_prune)
    banks = len(quota)
    bank_of = torch.arange(units) // b
    done = torch.zeros(g, banks, dtype=torch.long)
    done.scatter_add_(1, bank_of[order], torch.ones_like(order))
    padded = torch.full((g, banks * b), math.inf, dtype=score.dtype)
    padded[:, :units] = score
    rank = padded.view(g, banks, b).argsort(dim=-1, stable=True).argsort(dim=-1)
    rank = rank.view(g, -1)[:, :units]
    return rank < (quota - done)[:, bank_of]


@dataclass
class _Trace:
    """Greedy removal traces of all groups, and what refits any prefix of them without a solve.

    Only when all groups fit one memory chunk: ``factor`` holds, per group, the rows of ``U^T``
    with ``Hinv - U U^T`` the inverse on the columns still kept, one row per removed column in
    trace order (``L = U[removed, :]`` is the Cholesky factor of ``Hinv`` on the removed
    columns), and ``solved`` the matching rows of ``L^-1 w_removed``. Traces of the global rule
    may stop early (``cost`` inf past that point, see :func:`_selection_known`).
    """

    order: torch.Tensor  # [G, n] units, in removal order
    cost: torch.Tensor  # [G, n] error increase of each removal
    weight: torch.Tensor  # [G, rows, Kp] padded original weights
    factor: torch.Tensor | None = None  # [G, traced * k, Kp]
    solved: torch.Tensor | None = None  # [G, traced * k, rows]


def _selection_known(cost: torch.Tensor, order: torch.Tensor, sizes: torch.Tensor,
                     goal: float) -> bool:  # fmt: skip
    """Whether the global selection of ``obs_layer`` is decided by these trace prefixes.

    Scores are made non-decreasing along each trace, so every untraced score is at least the
    smallest last traced score ``b``; traced scores below ``b`` come first in the full ranking.
    Once their elements reach ``goal`` (sparsity times the layer's elements), the selected prefix
    lies among them, and untraced entries cannot change it.
    """
    size = sizes.gather(1, order)
    score = (cost / size).cummax(dim=1).values
    return float(size[score < score[:, -1].min()].sum()) >= goal


def _trace(weight: torch.Tensor, h: torch.Tensor, pattern: Pattern, removals: int,
           per_round: int | None = None, sparsity: float | None = None) -> _Trace:  # fmt: skip
    """Greedy OBS traces (see :func:`greedy_trace`); with ``sparsity`` (global rule) they may stop
    as soon as the layer's selection is decided."""
    rows, k = pattern.rows, pattern.k
    m, kk = weight.shape
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    wp, hi = _pad(weight.double(), hinv, rows, k)
    g_all, _, kp = wp.shape
    units = kp // k
    step = per_round or -(-units // ROUNDS)
    sizes = real_sizes((m, kk), (rows, k))  # [G, U]
    order = torch.zeros(g_all, removals, dtype=torch.long)
    cost = torch.full((g_all, removals), math.inf, dtype=torch.float64)
    per = max(1, MEMORY_BYTES // (8 * removals * k * kp))
    one_chunk = per >= g_all
    goal = None
    if one_chunk and sparsity is not None and pattern.rule == "global":
        goal = sparsity * float(sizes.sum())
    span = torch.arange(k)
    diag0 = _block_diag(hi, units, k)
    eye = torch.eye(k, dtype=torch.float64)
    for g0 in range(0, g_all, per):
        w = wp[g0 : g0 + per].clone()
        gc = w.shape[0]
        # current inverse = hi - U U^T; only U grows, the shared hi is never copied per group
        ut = torch.empty(gc, removals * k, kp, dtype=torch.float64)
        solved = torch.empty(gc, removals * k, rows, dtype=torch.float64)
        diag = diag0.expand(gc, *diag0.shape).clone()
        removed = torch.zeros(gc, units, dtype=torch.bool)
        gi = torch.arange(gc)[:, None]
        done = 0
        while done < removals:
            take = min(step, removals - done)
            err = _unit_costs(diag, w, k)
            score = (err / sizes[g0 : g0 + gc]).masked_fill(removed, math.inf)
            if pattern.rule == "banks":
                allowed = _allowed_in_banks(score, order[g0 : g0 + gc, :done], pattern)
                score = score.masked_fill(~allowed, math.inf)
            pick = score.argsort(dim=1, stable=True)[:, :take]  # ties: the lowest index
            order[g0 : g0 + gc, done : done + take] = pick
            cost[g0 : g0 + gc, done : done + take] = err.gather(1, pick)
            cols = (pick[:, :, None] * k + span).reshape(gc, take * k)
            tk, n = cols.shape[1], done * k
            # rows of the current inverse at the removed columns: [G, tk, Kp]
            hs = hi.index_select(0, cols.flatten()).view(gc, tk, kp)
            if n:
                un = ut[:, :n]
                hs.baddbmm_(un[gi, :, cols], un, alpha=-1)  # un[gi, :, cols]: [G, tk, n]
            chol = torch.linalg.cholesky(hs.gather(2, cols[:, None, :].expand(gc, tk, tk)))
            # L^-1 as a small matrix: a product keeps ``new`` row-major (fast to copy and square)
            eye_t = torch.eye(tk, dtype=torch.float64).expand(gc, tk, tk)
            linv = torch.linalg.solve_triangular(chol, eye_t, upper=False)
            new = ut[:, n : n + tk]
            new.copy_(torch.bmm(linv, hs))
            ws = w.gather(2, cols[:, None, :].expand(gc, rows, tk))  # [G, rows, tk]
            # rows n..n+tk of L^-1 w_removed (forward substitution: ``w`` is already downdated)
            z = solved[:, n : n + tk]
            z.copy_(torch.bmm(linv, ws.transpose(1, 2)))
            w.baddbmm_(z.transpose(1, 2), new, alpha=-1)
            # removed columns leave the problem: zero weight, a harmless unit inverse block
            w.scatter_(2, cols[:, None, :].expand(gc, rows, tk), 0.0)
            if k == 1:
                diag.sub_(new.square().sum(1)).scatter_(1, pick, 1.0)
            else:
                nb = new.view(gc, tk, units, k)
                diag.sub_(torch.einsum("gtua,gtub->guab", nb, nb))
                diag[gi, pick] = eye
            removed.scatter_(1, pick, True)
            done += take
            if goal is not None and done < removals and _selection_known(
                cost[:, :done], order[:, :done], sizes, goal
            ):
                order[:, done:] = (~removed).nonzero()[:, 1].view(gc, units - done)
                break
        if one_chunk:
            return _Trace(order, cost, wp, ut[:, : done * k], solved[:, : done * k])
    return _Trace(order, cost, wp)


def greedy_trace(weight: torch.Tensor, h: torch.Tensor, pattern: Pattern, removals: int,
                 per_round: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Greedy OBS removal of ``removals`` units per group: (order [G, n], cost [G, n]).

    Each round every group removes its ``per_round`` cheapest units (default
    ``ceil(units / ROUNDS)``; 1 is exact OBC greedy) by cost per real element, so a ragged edge
    unit competes per weight; the removal is jointly optimal for the set, and ``Hinv`` is
    downdated to the columns still kept. ``cost`` is each unit's error increase when chosen.
    """
    tr = _trace(weight, h, pattern, removals, per_round)
    return tr.order, tr.cost


def _refit(tr: _Trace, removed_units: torch.Tensor, k: int, shape: tuple[int, int]) -> torch.Tensor:
    """Least-squares weights ([M, K], float64) when each group drops a prefix of its trace.

    Dropping the columns ``R`` moves a row by ``-Hinv[:, R] (Hinv_RR)^-1 w_R``; with
    ``U[:, :n] = Hinv[:, R] L^-T`` and ``L = U[R, :n]`` lower triangular this is
    ``-U[:, :n] L^-1 w_R``. ``L`` is triangular, so the first ``n`` rows of the trace's
    ``L^-1 w`` are those of the prefix: no solve at all, instead of a Cholesky per mask.
    """
    assert tr.factor is not None and tr.solved is not None
    g, rows, kp = tr.weight.shape
    z = tr.solved * (torch.arange(tr.solved.shape[1]) < removed_units[:, None] * k)[:, :, None]
    out = tr.weight.baddbmm(z.transpose(1, 2), tr.factor, alpha=-1)
    m, kk = shape
    return out.reshape(g * rows, kp)[:m, :kk]


def obs_layer(
    weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern, sparsity: float,
    damp: float = DAMP, per_round: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep-mask [M, K] bool, reconstructed weight [M, K]) for one layer's GEMM view.

    ``hessian`` is ``X X^T`` ([K, K]) of the layer's calibration inputs (undamped);
    ``per_round``: units each group removes per OBS round (see :func:`greedy_trace`).
    """
    m, kk = weight.shape
    h = damped(hessian, damp)
    rows, k = pattern.rows, pattern.k
    g, units = -(-m // rows), -(-kk // k)
    if pattern.rule == "per-group":
        rounds = pattern.count
    elif pattern.rule == "banks":
        rounds = sum(pattern.bank_prune)
    else:
        rounds = units if sparsity > 0 else 0
    removed = torch.zeros(g, units, dtype=torch.bool)
    if rounds == 0:
        return torch.ones(m, kk, dtype=torch.bool), weight.clone()
    tr = _trace(weight, h, pattern, rounds, per_round,
                sparsity if pattern.rule == "global" else None)  # fmt: skip
    take = torch.ones(g, rounds, dtype=torch.bool)
    if pattern.rule == "global":
        size = real_sizes((m, kk), (rows, k)).gather(1, tr.order)
        score = (tr.cost / size).cummax(dim=1).values  # prefixes of each trace, cheapest first
        take = ~select_lowest(score, size, sparsity)
    removed.scatter_(1, tr.order, take)
    keep = expand_blocks(~removed, (rows, k), (m, kk))
    if tr.factor is None:  # traced in several chunks: solve for the mask directly
        return keep, least_squares(weight, h, keep).to(weight.dtype)
    return keep, (_refit(tr, take.sum(1), k, (m, kk)) * keep).to(weight.dtype)


# ---- a whole model ------------------------------------------------------------------------------
class _Captured(Exception):  # noqa: N818 - control flow: the layer's input is all we need
    pass


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's GEMM input as [N, K] rows (im2col for a conv, in gemm_view's K order)."""
    if isinstance(module, nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        cols = F.unfold(x, module.kernel_size, module.dilation, 0, module.stride)  # [B, K, L]
        b, k, n = cols.shape  # unfold's rows are (c, kh, kw): to gemm_view's (kh, kw, c)
        return cols.view(b, x.shape[1], k // x.shape[1], n).permute(0, 3, 2, 1).reshape(-1, k)
    return x.reshape(-1, x.shape[-1])


def layer_hessian(model: nn.Module, module: nn.Module,
                  inputs: Iterable[torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """``X X^T`` (float64, [K, K]) of ``module``'s inputs over ``inputs`` (model in eval mode).

    Each forward pass stops right after ``module`` has seen its input.
    """
    acc: list[torch.Tensor] = []

    def hook(mod, args):
        cols = _columns(mod, args[0].detach()).double()
        acc.append(cols.T @ cols)
        raise _Captured

    handle = module.register_forward_pre_hook(hook)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                with contextlib.suppress(_Captured):
                    model(x)
    finally:
        handle.remove()
        model.train(was)
    if not acc:
        raise UserError("the calibration data never reached a pruned layer",
                        "pass inputs the model accepts")  # fmt: skip
    return torch.stack(acc).sum(0).cpu()


def forward_order(model: nn.Module, names: Iterable[str], x: torch.Tensor) -> list[str]:
    """``names`` in the order the model calls them (one forward pass); unreached ones last."""
    wanted, seen = set(names), []
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: seen.append(n))
               for n in wanted]  # fmt: skip
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    first = list(dict.fromkeys(seen))
    return first + [n for n in names if n not in first]


def calibration_inputs(data: Iterable[Any], device: torch.device,
                       max_batches: int | None = None) -> list[torch.Tensor]:  # fmt: skip
    """Input tensors from batches that are tensors or ``(x, y, ...)`` tuples (labels unused)."""
    out = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        x = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(x, torch.Tensor):
            raise UserError("calibration batches must be tensors or (x, y) tuples",
                            "pass a DataLoader or a list of input tensors")  # fmt: skip
        out.append(x.to(device))
    if not out:
        raise UserError("OBS reconstruction needs calibration data",
                        "pass data= a few batches of inputs (a few hundred images)")  # fmt: skip
    return out


def reconstruct(model: nn.Module, specs: Mapping[str, LayerSpec], method: PruneMethod,
                sparsities: Mapping[str, float], inputs: list[torch.Tensor],
                masks: Mapping[str, torch.Tensor] | None = None, damp: float = DAMP,
                progress: Callable[[int, int, str], None] | None = None) -> None:  # fmt: skip
    """Prune and reconstruct every layer of ``specs`` in forward order, in place.

    With ``masks`` (GEMM-shaped keep-masks per layer, e.g. from magnitude) only the kept weights
    are re-fitted; without, OBS chooses the blocks too. Each layer is calibrated on the outputs
    of the layers already pruned before it.
    """
    for name, spec in specs.items():
        if spec.groups != 1 or not isinstance(spec.module, nn.Conv2d | nn.Linear):
            raise UserError(
                f"layer {name}: obs reconstruction handles groups=1 Conv2d and Linear layers, "
                f"not this {type(spec.module).__name__} (groups={spec.groups})",
                "exclude the layer (exclude=[...]) or use importance='magnitude' without "
                "reconstruct",
            )
    order = forward_order(model, specs, inputs[0])
    for i, name in enumerate(order, 1):
        spec = specs[name]
        module = spec.module
        hessian = layer_hessian(model, module, inputs)
        weight = gemm_view(module.weight).detach().cpu()
        if masks is not None:
            keep = masks[name].cpu().bool()
            new = least_squares(weight, damped(hessian, damp), keep).to(weight.dtype)
        else:
            pattern = pattern_for(method, spec, sparsities[name])
            keep, new = obs_layer(weight, hessian, pattern, sparsities[name], damp)
        if get_mask(module) is None:
            set_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
        with torch.no_grad():
            orig = module.parametrizations.weight.original
            orig.copy_(from_gemm(new, orig).to(orig.device))
        set_mask(module, from_gemm(keep, module.weight))
        if progress is not None:
            progress(i, len(order), name)
