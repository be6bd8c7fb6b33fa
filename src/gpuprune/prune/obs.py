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
MEMORY_BYTES = 256 << 20  # per-layer cap on the stacked per-group inverse Hessians
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


def greedy_trace(weight: torch.Tensor, h: torch.Tensor, pattern: Pattern, rounds: int,
                 eligible: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Greedy OBS removal of ``rounds`` units per group: (order [G, rounds], cost [G, rounds]).

    Cost is the increase of the group's output error, divided by the unit's real element count
    when choosing (so a ragged edge unit competes per weight). ``eligible(removed, order_so_far)``
    may restrict the candidates ([G, U] bool).
    """
    rows, k = pattern.rows, pattern.k
    m, kk = weight.shape
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    wp, hi_full = _pad(weight.double(), hinv, rows, k)
    g_all, _, kp = wp.shape
    units = kp // k
    sizes = real_sizes((m, kk), (rows, k))  # [G, U]
    order = torch.zeros(g_all, rounds, dtype=torch.long)
    cost = torch.zeros(g_all, rounds, dtype=torch.float64)
    per = max(1, MEMORY_BYTES // (8 * kp * kp))
    eye = torch.eye(k, dtype=torch.float64)
    span = torch.arange(k)
    for g0 in range(0, g_all, per):
        w = wp[g0 : g0 + per].clone()
        gc = w.shape[0]
        hi = hi_full.expand(gc, kp, kp).clone()
        removed = torch.zeros(gc, units, dtype=torch.bool)
        gi = torch.arange(gc)[:, None]
        for r in range(rounds):
            diag = hi.view(gc, units, k, units, k).diagonal(dim1=1, dim2=3)  # [G, k, k, U]
            diag = diag.permute(0, 3, 1, 2)  # [G, U, k, k]
            if k == 1:
                dinv = 1.0 / diag
            else:
                dinv = torch.linalg.inv(diag)
            ws = w.view(gc, rows, units, k)
            err = torch.einsum("grua,guab,grub->gu", ws, dinv, ws)
            score = err / sizes[g0 : g0 + gc]
            ok = ~removed if eligible is None else eligible(removed, order[g0 : g0 + gc, :r])
            score = score.masked_fill(~ok, math.inf)
            pick = torch.argmin(score, dim=1)  # ties: the lowest index
            order[g0 : g0 + gc, r], cost[g0 : g0 + gc, r] = pick, err[gi[:, 0], pick]
            cols = pick[:, None] * k + span  # [G, k]
            hs = hi[gi, :, cols].transpose(1, 2)  # [G, Kp, k]
            dsel = dinv[gi[:, 0], pick]  # [G, k, k]
            wsel = w.gather(2, cols[:, None, :].expand(gc, rows, k))  # [G, rows, k]
            w -= torch.einsum("gka,gab,grb->grk", hs, dsel, wsel)
            hi -= torch.einsum("gka,gab,glb->gkl", hs, dsel, hs)
            # removed columns leave the problem exactly: zero weight, decoupled unit inverse
            w.scatter_(2, cols[:, None, :].expand(gc, rows, k), 0.0)
            hi[gi, cols, :] = 0.0
            hi[gi, :, cols] = 0.0
            hi[gi[:, :, None], cols[:, :, None], cols[:, None, :]] = eye
            removed[gi[:, 0], pick] = True
    return order, cost


def _bank_eligible(pattern: Pattern, units: int):
    bank_of = torch.arange(units) // pattern.bank
    quota = torch.tensor(pattern.bank_prune)

    def eligible(removed: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        done = torch.zeros(removed.shape[0], len(quota), dtype=torch.long)
        done.scatter_add_(1, bank_of[order], torch.ones_like(order))
        return ~removed & (done < quota)[:, bank_of]

    return eligible


def obs_layer(
    weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern, sparsity: float,
    damp: float = DAMP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep-mask [M, K] bool, reconstructed weight [M, K]) for one layer's GEMM view.

    ``hessian`` is ``X X^T`` ([K, K]) of the layer's calibration inputs (undamped).
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
    if rounds > 0:
        eligible = _bank_eligible(pattern, units) if pattern.rule == "banks" else None
        order, cost = greedy_trace(weight, h, pattern, rounds, eligible)
        take = torch.ones(g, rounds, dtype=torch.bool)
        if pattern.rule == "global":
            size = real_sizes((m, kk), (rows, k)).gather(1, order)
            score = (cost / size).cummax(dim=1).values  # prefixes of each trace, cheapest first
            take = ~select_lowest(score, size, sparsity)
        removed.scatter_(1, order, take)
    keep = expand_blocks(~removed, (rows, k), (m, kk))
    return keep, least_squares(weight, h, keep).to(weight.dtype)


# ---- a whole model ------------------------------------------------------------------------------
class _Captured(Exception):  # noqa: N818 - control flow: the layer's input is all we need
    pass


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's GEMM input as [N, K] rows (im2col for a conv, in gemm_view's K order)."""
    if isinstance(module, nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        cols = F.unfold(x, module.kernel_size, module.dilation, 0, module.stride)  # [B, K, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
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
