"""Pruning methods: each turns a layer's importance map into a boolean keep-mask.

A method sees the importance map as the layer's [M, K] GEMM view (``gemm_view``) and a layer
sparsity (fraction of weights to zero), and returns a keep-mask of the same shape made of its own
unit: a GPU tile, a SIMD-group vector, a filter row, a bank of a row... Register your own pattern
with ``@METHODS.register("name")`` on a :class:`PruneMethod` subclass.

Each method also declares, in its ``kernel`` class attribute, the kernel variant that skips its
pattern (``"tile"`` or ``"simd"``). This is the one place the method -> kernel mapping lives: the
pruner copies it into the plan, and compile, the experiment, the benchmarks and the latency model
read it from there (or from :func:`kernel_of`).

Block scores are the *mean* importance per real element, so a ragged edge block (fewer real
elements than a full block) is compared on equal terms with full blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from gpuprune.errors import UserError
from gpuprune.gemm import block_grid, block_reduce, expand_blocks
from gpuprune.prune.latency import measure_latency
from gpuprune.prune.layers import LayerSpec
from gpuprune.registry import Registry

METHODS: Registry[type[PruneMethod]] = Registry("pruning method")


# ---- shared helpers -----------------------------------------------------------------------------
def real_sizes(shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """[gm, gk] float64 count of real elements per block (same as ``gemm.block_sizes``, faster)."""
    (m, k), (bm, bk) = shape, block
    gm, gk = block_grid(shape, block)
    rows = torch.full((gm,), float(bm), dtype=torch.float64)
    cols = torch.full((gk,), float(bk), dtype=torch.float64)
    rows[-1], cols[-1] = m - bm * (gm - 1), k - bk * (gk - 1)
    return rows[:, None] * cols[None, :]


def block_scores(importance: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """[gm, gk] mean importance per real element of each block (ragged edges normalised)."""
    if tuple(block) == (1, 1):
        return importance.double()
    return _block_scores(importance, block)


def _block_scores(importance: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    # Same values as block_scores without its float64 copies: float32 -> float64 is exact, so
    # the order of the scores (all a mask depends on) is the same; block sums are float32 as
    # block_reduce computes them either way.
    if tuple(block) == (1, 1):
        return importance if importance.is_floating_point() else importance.double()
    shape = tuple(importance.shape)
    return block_reduce(importance.float(), block, "sum") / real_sizes(shape, block)


def select_lowest(scores: torch.Tensor, sizes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask over blocks: prune the lowest-scoring ones until ``sparsity`` of elements is hit.

    The number of pruned blocks is the prefix (in ascending score) whose element count is closest
    to ``sparsity * total``, so the result is within half the largest block of the request. At
    least one block is always kept, so a layer never goes dead. Ties go to the lower index first.
    """
    if sparsity == 0.0:
        return torch.ones(scores.shape, dtype=torch.bool)
    sz = sizes.flatten().double()
    if bool((sz == sz[0]).all()):  # equal blocks: the count is known without sorting
        return _prune_lowest(scores, _closest_count(scores.numel(), float(sz[0]), sparsity))
    flat = scores.flatten()
    order = torch.argsort(flat, stable=True)
    cum = torch.cat([sz.new_zeros(1), sz[order].cumsum(0)])[: flat.numel()]  # j pruned, j < n
    j = int(torch.argmin((cum - sparsity * sz.sum()).abs()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:j]] = False
    return keep.reshape(scores.shape)


def _closest_count(n: int, size: float, sparsity: float) -> int:
    """The j in [0, n) whose ``j * size`` is closest to ``sparsity * n * size`` (ties: lower j).

    The closed form of :func:`select_lowest`'s prefix search for n blocks of one size (sizes are
    whole element counts, so ``j * size`` is exact in float64, as the cumulative sum there).
    """
    goal = sparsity * (n * size)
    guess = int(goal // size)
    cands = [j for j in (guess - 1, guess, guess + 1, 0, n - 1) if 0 <= j < n]
    return min(cands, key=lambda j: (abs(j * size - goal), j))


_BAND_MIN = 1 << 18  # below this many scores, kthvalue on all of them is cheap enough
_BAND_SAMPLE = 1 << 16


def _band_select(
    x: torch.Tensor, j: int, flags: torch.Tensor
) -> tuple[torch.Tensor, int, torch.Tensor] | None:
    """(v, how many values are < v, indices of the values == v) for the j-th smallest v of ``x``.

    ``kthvalue`` on 100M values takes seconds, so a strided sample brackets the answer between
    two values, comparison passes count what lies below the bracket and find the indices inside
    it, and only those values go to ``kthvalue``; the ties of v are among them too. If the
    bracket misses, it is widened; None when even the widest misses (NaN, or a freak sample).
    ``flags`` (bool, like ``x``) is scratch space, free again on return.
    """
    n = x.numel()
    sample = torch.sort(x[:: max(1, n // _BAND_SAMPLE)]).values
    s, q = sample.numel(), j / n
    inside = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    for margin in (0.002, 0.02, 0.2):
        lo = sample[max(0, int((q - margin) * s))]
        hi = sample[min(s - 1, int((q + margin) * s) + 1)]
        below = int(torch.count_nonzero(torch.lt(x, lo, out=flags)))
        torch.ge(x, lo, out=inside).logical_and_(torch.le(x, hi, out=flags))
        index = inside.nonzero().squeeze(1)  # ascending, so ties come out in index order
        if below < j <= below + index.numel():
            values = x[index]
            v = torch.kthvalue(values, j - below).values
            return v, below + int(torch.count_nonzero(values < v)), index[values == v]
    return None


def _prune_lowest(scores: torch.Tensor, j: int) -> torch.Tensor:
    """Keep-mask pruning the ``j`` lowest scores; among equal scores the lower index goes first.

    The same mask as a stable ascending argsort pruning its first ``j``, from one selection and
    a few comparison passes instead of a sort.
    """
    flat = scores.flatten()
    if j == 0:
        return torch.ones(scores.shape, dtype=torch.bool)
    # one bool buffer, first scratch for the selection, then the mask (fresh pages are costly)
    keep = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
    band = _band_select(flat, j, keep) if flat.numel() > _BAND_MIN else None
    if band is None:
        v = torch.kthvalue(flat, j).values
        if bool(v.isnan()):  # NaNs among the pruned (argsort puts them last): sort, as reference
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[torch.argsort(flat, stable=True)[:j]] = False
            return keep.reshape(scores.shape)
        ties = (flat == v).nonzero().squeeze(1)
        lower = int(torch.count_nonzero(flat < v))
    else:
        v, lower, ties = band
    torch.le(flat, v, out=keep).logical_not_()  # not `flat > v`: a NaN sorts last: it is kept
    keep[ties[j - lower :]] = True  # equal to the j-th: only the first few by index are pruned
    return keep.reshape(scores.shape)


def keep_top_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep the ``counts[j]`` highest scores of each row within group j (``scores[:, j, :]``).

    ``scores`` is [rows, groups, size] (padding must be -inf); ``counts`` is [groups]. Among equal
    scores the lower index is kept first (as a stable descending sort would).
    """
    size = scores.shape[-1]
    counts = counts.to(torch.long).clamp(0, size)
    top = int(counts.max()) if counts.numel() else 0
    if top == 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    # the count-th highest score of each (row, group): the keep threshold (amax is topk(1)
    # without its per-row selection, a few times faster on 25M banks of 4)
    if top == 1:
        thr = scores.amax(-1, keepdim=True)
    else:
        values = torch.topk(scores, top, dim=-1, sorted=True).values
        index = (counts - 1).clamp(min=0).view(1, -1, 1).expand(scores.shape[0], -1, 1)
        thr = values.gather(-1, index)
    # keep everything at or above it; a bank with more ties at the threshold than room
    # ("crowded", rare unless many scores are equal) keeps the first of them by index instead
    keep = scores >= thr
    small = torch.uint8 if size < 256 else torch.int32  # a bool sum widens to int64: slower
    crowded = keep.view(torch.uint8).sum(-1, dtype=small) > counts.to(small).view(1, -1)
    where = crowded.nonzero(as_tuple=True)
    if where[0].numel():
        s, t = scores[where], thr[where]
        above, tied = s > t, s == t
        need = counts[where[1]].unsqueeze(-1) - above.sum(-1, keepdim=True)
        keep[where] = above | (tied & (tied.cumsum(-1) <= need))
    return keep


def _check_fits(layer: LayerSpec, block: tuple[int, int], what: str) -> None:
    (m, k), (bm, bk) = layer.shape, block
    if m < bm or k < bk:
        where = f"target {layer.target.name!r}" if layer.target else "this method"
        raise UserError(
            f"layer {layer.name} ({m}x{k} GEMM) is smaller than one {what} block "
            f"{bm}x{bk} of {where}",
            "exclude it (exclude=[name]), pass skip_small=True (--skip-small) to leave such layers "
            "dense, or choose a target with a smaller block",
        )


# ---- the base class -----------------------------------------------------------------------------
class PruneMethod:
    """A pruning pattern: subclasses set ``name`` and override :meth:`unit` (maybe :meth:`mask`)."""

    name: ClassVar[str] = ""
    needs_target: ClassVar[bool] = False  # True when the block shape comes from a Target
    # The kernel variant that skips this pattern: "tile" (whole MWG x KWG blocks of zeros) or
    # "simd" (whole R x simd_k vectors). Patterns finer than either default to "tile".
    kernel: ClassVar[str] = "tile"
    # How the mask picks blocks, for channel permutation (gpuprune.prune.permute): "blocks" (the
    # highest-scoring blocks of the layer, this class's mask), "per-row" (the same count in every
    # row of blocks), or None (another rule: channel order is not searched for it).
    selection: ClassVar[str | None] = "blocks"

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        """(rows, k) of the block the method keeps or prunes whole (also used for reporting)."""
        raise NotImplementedError

    def check(self, layer: LayerSpec) -> None:
        """Raise :class:`UserError` if the method cannot prune this layer."""
        if self.needs_target and layer.target is None:
            raise UserError(
                f"method {self.name!r} derives its blocks from a GPU target; none given",
                "pass target='nvidia' (or --target; see `gpuprune targets`)",
            )

    def mask(self, importance: torch.Tensor, sparsity: float, layer: LayerSpec) -> torch.Tensor:
        """Boolean [M, K] keep-mask pruning about ``sparsity`` of the layer's weights."""
        block = tuple(self.unit(layer))
        scores = _block_scores(importance, block)
        (m, k), (bm, bk) = layer.shape, block
        if sparsity == 0.0:
            keep = torch.ones(scores.shape, dtype=torch.bool)
        elif m % bm == 0 and k % bk == 0:  # blocks of one size: no size table, no sort
            keep = _prune_lowest(scores, _closest_count(scores.numel(), bm * bk, sparsity))
        else:
            keep = select_lowest(scores, real_sizes(layer.shape, block), sparsity)
        return keep if block == (1, 1) else expand_blocks(keep, block, layer.shape)


@METHODS.register("tile")
class TilePruning(PruneMethod):
    """Work-group tile pruning: whole ``MWG x KWG`` blocks (``Target.tile_block()``)."""

    name = "tile"
    needs_target = True

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        return layer.target.tile_block()

    def check(self, layer: LayerSpec) -> None:
        super().check(layer)
        _check_fits(layer, self.unit(layer), "tile")


@METHODS.register("simd")
class SimdPruning(PruneMethod):
    """SIMD-group vector pruning: whole ``R x simd_k`` vectors (``Target.simd_block()``)."""

    name = "simd"
    needs_target = True
    kernel = "simd"

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        return layer.target.simd_block()

    def check(self, layer: LayerSpec) -> None:
        super().check(layer)
        _check_fits(layer, self.unit(layer), "SIMD-vector")


@METHODS.register("simd-balanced")
class SimdBalancedPruning(SimdPruning):
    """SIMD vectors, with the same count of kept vectors in every R-row group of the layer.

    Equal counts in every row-group of every work-group mean no SIMD group idles while another
    works and row tiles finish together. The count is ``round((1 - sparsity) * vectors_per_row)``,
    at least 1, so the achieved sparsity is quantised to one vector per row-group.
    """

    name = "simd-balanced"
    selection = "per-row"

    def mask(self, importance: torch.Tensor, sparsity: float, layer: LayerSpec) -> torch.Tensor:
        block = self.unit(layer)
        scores = _block_scores(importance, block)  # [gm, gk]
        count = max(1, round((1 - sparsity) * scores.shape[1]))
        keep = keep_top_per_row(scores.unsqueeze(1), torch.tensor([count]))[:, 0]
        return expand_blocks(keep, block, layer.shape)


@METHODS.register("unstructured")
class UnstructuredPruning(PruneMethod):
    """Han et al. 2015: prune single weights by importance (magnitude by default)."""

    name = "unstructured"

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        return (1, 1)


@METHODS.register("filter")
class FilterPruning(PruneMethod):
    """Li et al. 2016: prune whole filters (GEMM rows = output channels) by mean L1.

    The rows are zeroed (masked), not removed; removing channels would change the next layer too.
    """

    name = "filter"

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        return (1, layer.shape[1])


@METHODS.register("ssl")
class SSLPruning(PruneMethod):
    """Wen et al. 2016 (SSL): after group-lasso training (:func:`ssl_penalty`), prune small groups.

    ``group``: ``shape`` (one K column across all filters: the im2col GEMM loses a row of X),
    ``filter`` (a GEMM row) or ``channel`` (the ``kh*kw`` columns of one input channel). In the
    K order ``(kh, kw, c_in)`` a channel's columns are one per tap, ``C`` apart: no block, so a
    channel is chosen whole and its columns are skipped as ``shape`` columns (unit ``M x 1``).
    """

    name = "ssl"
    # declared, with the mask overridden: its units are whole M x 1 columns or 1 x K rows, so
    # the channel-order search finds no block that order changes and says so per link
    selection = "blocks"
    GROUPS: ClassVar[tuple[str, ...]] = ("shape", "filter", "channel")

    def __init__(self, group: str = "shape") -> None:
        if group not in self.GROUPS:
            raise UserError(
                f"unknown SSL group {group!r}", f"choose one of: {', '.join(self.GROUPS)}"
            )
        self.group = group

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        m, k = layer.shape
        return (1, k) if self.group == "filter" else (m, 1)

    def mask(self, importance: torch.Tensor, sparsity: float, layer: LayerSpec) -> torch.Tensor:
        area = layer.kernel_area
        if self.group != "channel" or area == 1:
            return super().mask(importance, sparsity, layer)
        m, k = layer.shape
        scores = importance.double().view(m, area, k // area).mean((0, 1))  # [C]
        keep = torch.ones(scores.shape, dtype=torch.bool) if sparsity == 0.0 else _prune_lowest(
            scores, _closest_count(scores.numel(), m * area, sparsity))  # fmt: skip
        return keep.view(1, 1, -1).expand(m, area, -1).reshape(m, k)


@METHODS.register("balanced")
class BalancedPruning(PruneMethod):
    """Yao et al. 2019: rows split into banks of ``bank`` weights; every bank keeps equally many.

    ``bank`` defaults to the target's ``KWG`` (one local-memory slab), else 32. A full bank keeps
    ``max(1, round((1 - sparsity) * bank))`` weights; a ragged last bank of ``r`` weights keeps the
    same share of its own length.
    """

    name = "balanced"
    selection = None

    def __init__(self, bank: int | None = None) -> None:
        if bank is not None and bank < 1:
            raise UserError(f"bank size must be >= 1, got {bank}", "pass e.g. bank=32")
        self.bank = bank

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        return (1, 1)

    def bank_size(self, layer: LayerSpec) -> int:
        return self.bank or (layer.target.kwg if layer.target else 32)

    def counts(self, sizes: list[int], sparsity: float) -> list[int]:
        """Weights kept per bank, for banks of the given lengths."""
        return [max(1, round((1 - sparsity) * r)) for r in sizes]

    def mask(self, importance: torch.Tensor, sparsity: float, layer: LayerSpec) -> torch.Tensor:
        m, k = layer.shape
        b = self.bank_size(layer)
        banks = -(-k // b)
        # float32 (or wider) keeps the scores' order exactly; pad only a ragged last bank
        dtype = torch.promote_types(importance.dtype, torch.float32)
        if banks * b == k:
            padded = importance.to(dtype)
        else:
            padded = torch.full((m, banks * b), float("-inf"), dtype=dtype)
            padded[:, :k] = importance
        sizes = [b] * (banks - 1) + [k - b * (banks - 1)]
        keep = keep_top_per_row(
            padded.view(m, banks, b), torch.tensor(self.counts(sizes, sparsity))
        )
        return keep.reshape(m, banks * b)[:, :k]


@METHODS.register("nm")
class NMPruning(BalancedPruning):
    """N:M sparsity (2:4 by default): every group of M consecutive K weights keeps N.

    With ``n=None`` the count follows the sparsity, ``n = round(m * (1 - sparsity))`` (>= 1), so
    the achieved sparsity is quantised to ``1/m``. A ragged last group of ``r < m`` weights keeps
    ``min(n, r)``: the padding counts as pruned, as on hardware that pads K.
    """

    name = "nm"

    def __init__(self, n: int | None = None, m: int = 4) -> None:
        if m < 1 or (n is not None and not 1 <= n <= m):
            raise UserError(f"invalid N:M pattern {n}:{m}", "use 1 <= n <= m, e.g. n=2, m=4")
        super().__init__(bank=m)
        self.n = n

    def counts(self, sizes: list[int], sparsity: float) -> list[int]:
        n = self.n if self.n is not None else max(1, round(self.bank * (1 - sparsity)))
        return [min(n, r) for r in sizes]


LatencyFn = Callable[[LayerSpec, int], float]


@METHODS.register("channel-perf")
class ChannelPerfPruning(PruneMethod):
    """Radu et al. 2019: filter pruning whose kept count sits on a step of measured latency.

    Latency of the layer is measured at ``probes`` evenly spaced output-channel counts (torch on
    the CPU by default, or ``latency(layer, channels) -> seconds``). Neighbouring counts whose
    latency differs by at most ``tolerance`` (relative) form one plateau; within a plateau fewer
    channels buy no time, so only each plateau's largest count is worth keeping. The kept count
    requested by the sparsity is snapped to the nearest such count.
    """

    name = "channel-perf"
    selection = None

    def __init__(
        self, probes: int = 8, tolerance: float = 0.05, latency: LatencyFn | None = None
    ) -> None:
        if probes < 1 or tolerance < 0:
            raise UserError("channel-perf needs probes >= 1 and tolerance >= 0", "pass probes=8")
        self.probes, self.tolerance = probes, tolerance
        self.latency = latency or measure_latency
        self._curves: dict[str, tuple[list[int], list[float]]] = {}

    def unit(self, layer: LayerSpec) -> tuple[int, int]:
        return (1, layer.shape[1])

    def curve(self, layer: LayerSpec) -> tuple[list[int], list[float]]:
        """(channel counts, latencies) probed for this layer; measured once and cached."""
        if layer.name not in self._curves:
            m = layer.shape[0]
            counts = sorted({max(1, round(m * i / self.probes)) for i in range(1, self.probes + 1)})
            self._curves[layer.name] = (counts, [self.latency(layer, c) for c in counts])
        return self._curves[layer.name]

    def snap(self, layer: LayerSpec, keep: int) -> int:
        """The largest count of a latency plateau nearest to ``keep`` (ties: the larger)."""
        counts, lat = self.curve(layer)
        edges, base = [], lat[0]
        for i in range(1, len(counts)):
            if lat[i] > base * (1 + self.tolerance):  # a new, slower plateau starts here
                edges.append(counts[i - 1])
                base = lat[i]
        edges.append(counts[-1])
        return min(edges, key=lambda e: (abs(e - keep), -e))

    def mask(self, importance: torch.Tensor, sparsity: float, layer: LayerSpec) -> torch.Tensor:
        m, k = layer.shape
        keep_rows = self.snap(layer, max(1, round((1 - sparsity) * m)))
        rows = importance.double().mean(dim=1)
        keep = torch.zeros(m, dtype=torch.bool)
        keep[torch.argsort(rows, descending=True, stable=True)[:keep_rows]] = True
        return keep[:, None].expand(m, k).clone()


def kernel_of(method: str | PruneMethod | type[PruneMethod]) -> str:
    """The kernel variant a method's pattern runs on (its ``kernel`` attribute)."""
    if isinstance(method, str):
        method = METHODS.get(method)
    return method.kernel


def get_method(method: str | PruneMethod, **options) -> PruneMethod:
    """A method instance from a registered name (with constructor options) or an instance."""
    if isinstance(method, PruneMethod):
        return method
    cls = METHODS.get(method)
    try:
        return cls(**options)
    except TypeError as err:
        raise UserError(
            f"bad option for method {method!r}: {err}", "check the method's options"
        ) from None
