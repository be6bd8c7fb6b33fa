"""Channel permutation before block pruning: gather important weights into the same blocks.

A block pattern keeps or drops whole ``bm x bk`` blocks of a layer's ``[M, K]`` GEMM view, so
which weights share a block decides what survives. Output channel ``c`` of one layer is a row of
its GEMM and, in the next layer, the ``kh*kw`` columns of input channel ``c`` (one per tap, ``C``
apart in the K order ``(kh, kw, c_in)``; a Linear after a flatten: ``H*W`` adjacent columns);
reordering the channels of that link (the first layer's rows, its batch norm, the next layer's
columns) leaves the model's function unchanged and changes only which weights fall into which
block (Tetris, Ji et al., NeurIPS 2018; channel permutations for N:M sparsity, Pool & Yu, NeurIPS
2021).

The order is chosen by local search on each link in model order: swap two channels when the
importance the method would keep, summed over the link's two pruned layers as fractions of each
layer's total, rises. Swaps are scored on block sums updated in place (a swap touches two row
blocks of the producer and the column blocks of two channel spans in the consumer), every
candidate partner of one channel at once.

Links are found on a ``torch.fx`` trace: a Conv2d (groups 1) or Linear whose only reader, through
per-channel modules (batch norm, activations, pooling, dropout, flatten), is one Conv2d (groups 1)
or Linear. Anything else (a residual add, a concatenation, a reused module, a grouped conv) ties
the channels: that link is named, with its reason, and left in order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from gpuprune.errors import UserError
from gpuprune.gemm import block_grid, block_reduce
from gpuprune.prune.methods import real_sizes

if TYPE_CHECKING:
    from gpuprune.prune.layers import LayerSpec
    from gpuprune.prune.methods import PruneMethod

# modules and functions that act on each channel alone (a channel's values stay its own)
_PER_CHANNEL = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_PER_CHANNEL_FN = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.hardswish,
    F.leaky_relu, F.elu, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}  # fmt: skip
_PER_CHANNEL_METHOD = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}


@dataclass(frozen=True)
class ChannelLink:
    """One reorderable set of channels: ``producer``'s outputs, read only by ``consumer``."""

    producer: str  # Conv2d or Linear whose weight rows (and bias) are the channels
    consumer: str  # Conv2d or Linear whose input channels they are
    channels: int
    carriers: tuple[str, ...] = ()  # batch norms in between: their per-channel state moves too
    spread: int = 1  # consumer input features per channel (a Linear after a flatten: H*W)
    taps: int = 1  # a conv consumer's kh*kw: its channel c is K columns c, c + C, ... (K_ORDER)


@dataclass
class LinkOrder:
    """What permuting one link did: the channel order chosen and the importance kept."""

    link: ChannelLink
    order: list[int]  # order[new position] = old channel
    swaps: int
    kept_before: dict[str, float]  # per pruned layer of the link: fraction of importance kept
    kept_after: dict[str, float]


@dataclass
class PermuteResult:
    """Every link permuted, and every GEMM layer whose output channels stayed, with the reason."""

    links: list[LinkOrder] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """JSON-ready: counts, per pruned layer the fraction of importance kept before any link
        moved and after all, and the layers left in order with their reasons."""
        moved = [lo for lo in self.links if lo.swaps]
        return {
            "links": len(self.links), "links_changed": len(moved),
            "swaps": sum(lo.swaps for lo in self.links),
            "kept_before": _kept_by_layer(self.links, before=True),
            "kept_after": _kept_by_layer(self.links, before=False),
            "fixed": dict(self.fixed),
        }  # fmt: skip


def _kept_by_layer(links: list[LinkOrder], before: bool) -> dict[str, float]:
    """Per pruned layer, the fraction kept; a layer in two links (rows in one, columns in the
    next) reads before the first and after the last."""
    out: dict[str, float] = {}
    for lo in links:
        if before:
            out.update({k: v for k, v in lo.kept_before.items() if k not in out})
        else:
            out.update(lo.kept_after)
    return {k: round(v, 5) for k, v in out.items()}


# ---- finding the links ------------------------------------------------------------------------
def _gemm_ok(mod: nn.Module | None) -> bool:
    return isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1)


def _flattens(node: fx.Node) -> bool:
    """torch.flatten(x, 1) / x.flatten(1) / nn.Flatten(): NCHW -> [N, C*H*W], channel-major."""
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and len(node.args) <= 2 and "end_dim" not in node.kwargs
    return False


def channel_links(model: nn.Module) -> tuple[list[ChannelLink], dict[str, str]]:
    """The model's reorderable links, and {GEMM layer: why its outputs cannot be reordered}."""
    modules = dict(model.named_modules())
    gemms = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
    others = {n: f"a {type(m).__name__}: channel order is searched for Conv2d and Linear layers"
              for n, m in modules.items()
              if isinstance(m, nn.modules.conv._ConvNd) and n not in gemms}  # fmt: skip
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # data-dependent control flow: no graph, no links
        why = f"the model cannot be traced by torch.fx ({type(exc).__name__})"
        return [], dict.fromkeys(gemms, why) | others
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    links: list[ChannelLink] = []
    fixed: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in gemms:
            continue
        name, mod = node.target, modules[node.target]
        found = _follow(node, mod, modules, calls)
        if isinstance(found, str):
            fixed[name] = found
        else:
            links.append(found)
    for name in gemms:  # never called in the trace (dead code) or called through a container
        if name not in fixed and all(lk.producer != name for lk in links):
            fixed[name] = "not called in the traced forward"
    return links, fixed | others


def _follow(node: fx.Node, mod: nn.Module, modules: dict[str, nn.Module],
            calls: Counter) -> ChannelLink | str:  # fmt: skip
    """The link from GEMM ``node`` to its one reader, or why there is none."""
    name = node.target
    if not _gemm_ok(mod):
        return f"a grouped convolution (groups={mod.groups}): its channels are tied to groups"
    if calls[name] != 1:
        return "called more than once"
    channels = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    carriers: list[str] = []
    flat = False
    while True:
        prev, users = node, list(node.users)
        if not users:
            return "its output is not read"
        if len(users) != 1:
            return f"its output is read by {len(users)} operations (an add or a concatenation)"
        node = users[0]
        if node.op == "output":
            return "its output is the model's output"
        sub = modules.get(node.target) if node.op == "call_module" else None
        if sub is not None and calls[node.target] != 1:
            return f"{node.target} is called more than once"
        if isinstance(sub, nn.BatchNorm1d | nn.BatchNorm2d) and not flat:
            if sub.num_features != channels:
                return f"{node.target} has {sub.num_features} features, not {channels}"
            carriers.append(node.target)
        elif isinstance(sub, _PER_CHANNEL) or (
            node.op == "call_function" and node.target in _PER_CHANNEL_FN
        ) or (node.op == "call_method" and node.target in _PER_CHANNEL_METHOD):
            if not node.args or node.args[0] is not prev or len(node.all_input_nodes) != 1:
                return f"{node.target} reads it with other inputs"
            continue
        elif (isinstance(sub, nn.Flatten) and sub.start_dim == 1 and sub.end_dim == -1) or \
                _flattens(node):  # fmt: skip
            flat = True
        elif isinstance(sub, nn.Conv2d) and sub.groups > 1:
            return f"its reader {node.target} is a grouped convolution (groups={sub.groups})"
        elif sub is not None and _gemm_ok(sub):
            return _reader(name, node.target, sub, channels, tuple(carriers), flat,
                           isinstance(mod, nn.Linear))  # fmt: skip
        else:
            what = type(sub).__name__ if sub is not None else str(node.target)
            what = getattr(node.target, "__name__", what) if sub is None else what
            return f"its output reaches {what} before the next layer"


def _reader(producer: str, consumer: str, sub: nn.Module, channels: int,
            carriers: tuple[str, ...], flat: bool, from_linear: bool
            ) -> ChannelLink | str:  # fmt: skip
    if isinstance(sub, nn.Conv2d):
        if flat or sub.in_channels != channels:
            return f"{consumer} does not read its channels one to one"
        taps = sub.kernel_size[0] * sub.kernel_size[1]
        return ChannelLink(producer, consumer, channels, carriers, taps=taps)
    features = sub.in_features
    if flat and not from_linear and features % channels == 0:
        return ChannelLink(producer, consumer, channels, carriers, features // channels)
    if from_linear and not flat and features == channels:
        return ChannelLink(producer, consumer, channels, carriers)
    return f"{consumer} does not read its channels one to one"


# ---- applying an order ------------------------------------------------------------------------
@torch.no_grad()
def apply_order(model: nn.Module, link: ChannelLink, order: torch.Tensor) -> None:
    """Reorder the link's channels in place: ``order[new] = old`` (the function is unchanged)."""
    modules = dict(model.named_modules())
    prod, cons = modules[link.producer], modules[link.consumer]
    prod.weight.copy_(prod.weight[order])
    if prod.bias is not None:
        prod.bias.copy_(prod.bias[order])
    for name in link.carriers:
        bn = modules[name]
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            if t is not None:
                t.copy_(t[order])
    w = cons.weight
    view = w.view(w.shape[0], link.channels, -1)  # conv: [M, C, kh*kw]; linear: [M, C, spread]
    view.copy_(view[:, order])


# ---- the search -------------------------------------------------------------------------------
# Block scores one link's search may compute (a count, so every machine stops at the same swap):
# the 1/8-width demo VGG16 needs under 10% of it per link; a full-width VGG16's 512-channel links
# under simd pruning stop within the first pass (526 s for the model: docs/design/pruning.md).
WORK_PER_LINK = 5e8
SMALL_GRID = 8192  # blocks: up to this many, exact() ranks whole candidate grids

class _Side:
    """One pruned layer of a link, as block sums the search updates swap by swap.

    ``units[c]`` is what channel ``c``'s weights add to each block, given its position: for the
    producer one row of per-K-block sums; for the consumer its ``w`` columns summed per row block.
    A consumer's channel at position ``p`` has the columns ``p * step + cols``: adjacent
    (``step = w``) after a flatten, one per tap ``C`` apart (``step = 1``) in a conv (``taps``).
    """

    def __init__(self, imp: torch.Tensor, block: tuple[int, int], keep: int, rows_side: bool,
                 channels: int, per_row: bool, taps: int = 1) -> None:  # fmt: skip
        self.rows_side, self.per_row, self.keep = rows_side, per_row, keep
        m, k = imp.shape
        bm, bk = block
        self.bm, self.bk = bm, bk
        self.gm, self.gk = block_grid((m, k), block)
        x = imp.double()
        self.total = float(x.sum()) or 1.0
        self.sizes = real_sizes((m, k), block)
        if rows_side:  # channels are rows: per-channel sums over each K block
            padded = F.pad(x, (0, self.gk * bk - k))
            self.units = padded.view(m, self.gk, bk).sum(-1)  # [C, gk]
        else:  # channels are sets of w columns
            self.w = k // channels
            padded = F.pad(x, (0, 0, 0, self.gm * bm - m))
            if taps > 1:  # [gm, bm, taps, C]: a channel's columns are C apart
                self.units = padded.view(self.gm, bm, taps, channels).sum(1).permute(2, 0, 1)
                self.step, self.cols = 1, torch.arange(self.w) * channels
            else:  # [gm, bm, C, w]: a channel's columns are adjacent
                self.units = padded.view(self.gm, bm, channels, self.w).sum(1).permute(1, 0, 2)
                self.step, self.cols = self.w, torch.arange(self.w)
            self.units = self.units.contiguous()  # [C, gm, w]
        self.sums = _block_sums(x, block)
        self.threshold: torch.Tensor | None = None  # the keep threshold of ``sums`` (lazy)
        self.over = self.sums
        self.ranked: object = None  # the current ranking, for exact(): (lazy)

    def work(self, screened: int, scored: int) -> int:
        """Block scores computed to screen and score one position's partners."""
        per = self.gk if self.rows_side else self.gm * self.gk
        large = self.rows_side and self.gm * self.gk > SMALL_GRID  # exact() ranks a window
        return screened * per + scored * (6 * self.gk if large else self.gm * self.gk)

    def swap(self, i: int, j: int, ci: int, cj: int) -> None:
        """Update the block sums for the swap of positions i and j (contents ci and cj)."""
        d = self.units[cj] - self.units[ci]
        if self.rows_side:
            self.sums[i // self.bm] += d
            self.sums[j // self.bm] -= d
        else:
            self.sums.index_add_(1, (i * self.step + self.cols) // self.bk, d)
            self.sums.index_add_(1, (j * self.step + self.cols) // self.bk, -d)
        self.threshold, self.ranked = None, None

    def exact(self, i: int, js: torch.Tensor, ci: int, cj: torch.Tensor) -> torch.Tensor:
        """[S] :meth:`value` after each swap of position i with js[s], exactly."""
        if not self.rows_side or self.gm * self.gk <= SMALL_GRID:
            return self.value(self.candidates(i, js, ci, cj))
        # a large producer grid: only two rows of blocks change, so only they are re-ranked
        d = self.units[cj] - self.units[ci]  # [S, gk]
        a, bs = i // self.bm, (js // self.bm).tolist()
        out = torch.empty(len(bs), dtype=torch.float64)
        for s, b in enumerate(bs):
            new = torch.stack([self.sums[a] + d[s], self.sums[b] - d[s]])
            out[s] = self._with_rows((a, b), new) if a != b else self._kept_now()
        return out / self.total

    def _kept_now(self) -> float:
        return float(self.value(self.sums[None])[0]) * self.total

    def _with_rows(self, rows: tuple[int, int], new: torch.Tensor) -> float:
        """Importance the top blocks keep once ``rows`` of blocks hold ``new`` ([2, gk] sums).

        Per row: the two rows' own top ``keep``. Over the layer: a block ranked above ``n - 2gk``
        stays in the top ``n`` whatever two rows change, and one ranked below ``n + 2gk`` cannot
        enter it, so only that window and the new rows are ranked.
        """
        sizes = self.sizes[list(rows)]
        if self.per_row:
            if self.ranked is None:
                top = torch.topk(self.sums / self.sizes, self.keep, dim=-1).indices
                self.ranked = self.sums.gather(-1, top).sum(-1)  # [gm] kept per row
            top = torch.topk(new / sizes, self.keep, dim=-1).indices
            return float(self.ranked.sum() - self.ranked[list(rows)].sum()
                         + new.gather(-1, top).sum())  # fmt: skip
        if self.ranked is None:
            mean = (self.sums / self.sizes).flatten()
            order = torch.argsort(mean, descending=True, stable=True)
            cum = torch.cat([mean.new_zeros(1), self.sums.flatten()[order].cumsum(0)])
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel())
            self.ranked = (order, cum, rank)
        order, cum, rank = self.ranked
        n, gk = self.keep, self.gk
        lo, hi = max(0, n - 2 * gk), min(order.numel(), n + 2 * gk)
        gone = torch.cat([torch.arange(r * gk, (r + 1) * gk) for r in rows])
        flat = self.sums.flatten()
        early = rank[gone] < lo
        head = float(cum[lo] - flat[gone][early].sum())
        need = n - (lo - int(early.sum()))
        window = order[lo:hi]
        window = window[~torch.isin(window // gk, torch.tensor(rows))]
        sums = torch.cat([flat[window], new.flatten()])
        means = torch.cat([(flat / self.sizes.flatten())[window], (new / sizes).flatten()])
        top = torch.topk(means, need).indices
        return head + float(sums[top].sum())

    def candidates(self, i: int, js: torch.Tensor, ci: int, cj: torch.Tensor) -> torch.Tensor:
        """[B, gm, gk] block sums after swapping positions i and js[b] (contents ci, cj[b])."""
        b = js.numel()
        out = self.sums.expand(b, -1, -1).clone()
        if self.rows_side:
            d = self.units[cj] - self.units[ci]  # [B, gk]
            ar = torch.arange(b)
            out[ar, i // self.bm] += d
            out[ar, js // self.bm] -= d
        else:
            d = self.units[cj] - self.units[ci]  # [B, gm, w]
            at_i = ((i * self.step + self.cols) // self.bk).expand(b, self.gm, -1)
            at_j = ((js[:, None] * self.step + self.cols) // self.bk)[:, None, :]
            out.scatter_add_(2, at_i, d)
            out.scatter_add_(2, at_j.expand(-1, self.gm, -1), -d)
        return out

    def _over(self) -> torch.Tensor:
        """[gm, gk] what each block holds above the keep threshold of ``sums`` (lazy)."""
        if self.threshold is None:
            mean = self.sums / self.sizes
            if self.per_row:  # [gm, 1]: each row of blocks keeps its own top `keep`
                self.threshold = torch.topk(mean, self.keep, dim=-1).values[:, -1:]
            else:
                self.threshold = torch.topk(mean.flatten(), self.keep).values[-1]
            self.over = (self.sums - self.threshold * self.sizes).clamp(min=0)
        return self.over

    def screen(self, i: int, js: torch.Tensor, ci: int, cj: torch.Tensor) -> torch.Tensor:
        """[B] a cheap estimate of :meth:`value` after each swap, to shortlist candidates: the
        current keep threshold t held fixed (the top n sum to at most n*t plus what lies above
        t, for any t; n*t is the same for every candidate and left out)."""
        over = self._over()
        if not self.rows_side:  # the consumer's grid is small enough to build whole
            new = self.candidates(i, js, ci, cj)
            return (new - self.threshold * self.sizes).clamp(min=0).flatten(1).sum(-1) / self.total
        # the producer: a swap changes two rows of blocks, so only those are re-scored
        d = self.units[cj] - self.units[ci]  # [B, gk]
        a, b = i // self.bm, js // self.bm
        t = self.threshold
        ta = (t[a] if self.per_row else t) * self.sizes[a]  # [gk]
        tb = (t[b] if self.per_row else t) * self.sizes[b]  # [B, gk]
        change = ((self.sums[a] + d - ta).clamp(min=0) - over[a]).sum(-1)
        change += ((self.sums[b] - d - tb).clamp(min=0) - over[b]).sum(-1)
        change[b == a] = 0.0  # a swap within one row of blocks changes nothing
        return (over.sum() + change) / self.total

    def value(self, sums: torch.Tensor) -> torch.Tensor:
        """[B] fraction of importance kept: the top blocks by mean (in each row if per_row)."""
        mean = sums / self.sizes
        if self.per_row:
            top = torch.topk(mean, self.keep, dim=-1).indices
            return sums.gather(-1, top).sum((-1, -2)) / self.total
        flat = mean.flatten(1)
        top = torch.topk(flat, self.keep, dim=-1).indices
        return sums.flatten(1).gather(-1, top).sum(-1) / self.total


def _block_sums(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """[gm, gk] float64 block sums (``gemm.block_reduce`` sums in float32; the search updates
    these in place swap after swap and compares them exactly)."""
    (m, k), (bm, bk) = x.shape, block
    gm, gk = block_grid((m, k), block)
    padded = F.pad(x, (0, gk * bk - k, 0, gm * bm - m))
    return padded.view(gm, bm, gk, bk).sum((1, 3))


def search_order(sides: list[_Side], channels: int, passes: int = 6, max_partners: int = 256,
                 shortlist: int = 4, seed: int = 0, max_work: float = WORK_PER_LINK
                 ) -> tuple[torch.Tensor, int]:  # fmt: skip
    """(order, swaps): a channel order that keeps more of the sides' importance, never less.

    Each pass visits every position in a seeded random order, screens every other position (or
    ``max_partners`` drawn at random when there are more) by :meth:`_Side.screen`, scores the
    ``shortlist`` best exactly and makes the best swap that improves; stops after a pass with
    none, or once ``max_work`` block scores were computed (a count, not a clock: the same
    order on every machine).
    """
    order = torch.arange(channels)
    if not sides or channels < 2:
        return order, 0
    gen = torch.Generator().manual_seed(seed)
    current = sum(float(s.value(s.sums[None])[0]) for s in sides)
    swaps, work = 0, 0.0
    for _ in range(passes):
        improved = False
        for i in torch.randperm(channels, generator=gen).tolist():
            js = torch.cat([torch.arange(i), torch.arange(i + 1, channels)])
            if js.numel() > max_partners:
                js = js[torch.randperm(js.numel(), generator=gen)[:max_partners]]
            ci, cj = int(order[i]), order[js]
            guess = sum(s.screen(i, js, ci, cj) for s in sides)
            short = torch.topk(guess, min(shortlist, guess.numel())).indices
            values = sum(s.exact(i, js[short], ci, cj[short]) for s in sides)
            work += sum(s.work(js.numel(), short.numel()) for s in sides)
            pick = int(torch.argmax(values))
            if float(values[pick]) > current + 1e-9 * len(sides):
                current = float(values[pick])
                j = int(js[short[pick]])
                for s in sides:
                    s.swap(i, j, ci, int(order[j]))
                order[i], order[j] = order[j].clone(), order[i].clone()
                swaps += 1
                improved = True
            if work > max_work:
                return order, swaps
        if not improved:
            break
    return order, swaps


def check_unpruned(model: nn.Module, names: list[str]) -> None:
    """Raise if any of these layers is already masked: reorder first, then prune."""
    from torch.nn.utils import parametrize

    for name in names:
        mod = model.get_submodule(name)
        if parametrize.is_parametrized(mod):
            raise UserError(f"layer {name} is already pruned (masked); channels are "
                            "reordered before pruning",
                            "call permute() before the first apply()")  # fmt: skip


# ---- the whole model --------------------------------------------------------------------------
MaskFn = Callable[[torch.Tensor, float, "LayerSpec"], torch.Tensor]


def selection_of(method: PruneMethod) -> str | None:
    """The method's block rule for the search; "blocks" only where the mask is the base one or
    the class that overrides it declares its ``selection`` itself."""
    from gpuprune.prune.methods import PruneMethod

    kind = method.selection
    mro = type(method).__mro__
    owner = next(c for c in mro if "mask" in vars(c))  # the class whose mask runs
    declared = any("selection" in vars(c) for c in mro[: mro.index(owner) + 1])
    if kind == "blocks" and owner is not PruneMethod and not declared:
        return None  # a mask of its own that did not say how it picks blocks
    return kind


def reorder(model: nn.Module, specs: dict[str, LayerSpec], method: PruneMethod,
            importances: dict[str, torch.Tensor], sparsity: float, mask: MaskFn,
            passes: int = 6, seed: int = 0) -> PermuteResult:  # fmt: skip
    """Reorder every link of ``model`` for ``method`` at ``sparsity`` (see the module docstring).

    ``importances`` (per pruned layer, [M, K]) are reordered along with the weights; ``mask`` is
    the pruner's own mask function, used for the before/after fractions reported.
    """
    check_unpruned(model, list(specs))
    links, fixed = channel_links(model)
    result = PermuteResult(fixed=fixed)
    kind = selection_of(method)
    if kind is None:
        raise UserError(f"method {method.name!r} does not keep the highest-scoring blocks, so "
                        "channel order is not searched for it",
                        "drop permute for this method (it helps tile, simd, simd-balanced)")
    for link in links:
        sides, names = [], []
        for name, rows_side in ((link.producer, True), (link.consumer, False)):
            spec = specs.get(name)
            if spec is None or spec.groups != 1:
                continue
            side = _side(importances[name], sparsity, spec, method, mask, rows_side,
                         link, kind)  # fmt: skip
            if side is not None:
                sides.append(side)
                names.append(name)
        if not sides:
            result.fixed[link.producer] = ("channel order changes no block of a pruned layer "
                                           "here")  # fmt: skip
            continue
        before = {n: _kept(importances[n], sparsity, specs[n], mask) for n in names}
        order, swaps = search_order(sides, link.channels, passes=passes, seed=seed)
        if swaps:
            apply_order(model, link, order)
            for name in (link.producer, link.consumer):
                if name in importances:
                    importances[name] = _reorder_importance(importances[name], link, order,
                                                            name == link.producer)  # fmt: skip
        after = {n: _kept(importances[n], sparsity, specs[n], mask) for n in names}
        if swaps and sum(after.values()) < sum(before.values()):
            # the search holds block counts fixed; a ragged edge can make the real mask keep
            # another count, so the order is kept only if the mask itself gains
            back = torch.argsort(order)
            apply_order(model, link, back)
            for name in (link.producer, link.consumer):
                if name in importances:
                    importances[name] = _reorder_importance(importances[name], link, back,
                                                            name == link.producer)  # fmt: skip
            order, swaps, after = torch.arange(link.channels), 0, before
        result.links.append(LinkOrder(link, order.tolist(), swaps, before, after))
    return result


def _reorder_importance(imp: torch.Tensor, link: ChannelLink, order: torch.Tensor,
                        rows: bool) -> torch.Tensor:  # fmt: skip
    if rows:
        return imp[order]
    m = imp.shape[0]
    if link.taps > 1:  # gemm_view's (kh, kw, c_in): channels are the fastest index
        return imp.view(m, link.taps, link.channels)[:, :, order].reshape(m, -1)
    return imp.view(m, link.channels, -1)[:, order].reshape(m, -1)


def _kept(imp: torch.Tensor, sparsity: float, spec: LayerSpec, mask: MaskFn) -> float:
    total = float(imp.double().sum())
    return float((imp.double() * mask(imp, sparsity, spec)).sum()) / total if total else 1.0


def _side(imp: torch.Tensor, sparsity: float, spec: LayerSpec, method: PruneMethod,
          mask: MaskFn, rows_side: bool, link: ChannelLink, kind: str
          ) -> _Side | None:  # fmt: skip
    """The layer's side of a link, or None where channel order cannot change its blocks."""
    m, k = spec.shape
    bm, bk = method.unit(spec)
    gm, gk = block_grid((m, k), (bm, bk))
    if rows_side and (bm == 1 or gm == 1):
        return None  # each channel its own row block, or one row block for all
    channels = link.channels
    # every block within one channel's adjacent columns, or holding whole taps of all channels
    whole = (k // channels) % bk == 0 if link.taps == 1 else bk % channels == 0
    if not rows_side and (gk == 1 or bk == 1 or whole):
        return None  # order only moves whole blocks
    kept = block_reduce(mask(imp, sparsity, spec), (bm, bk), "any")
    keep = int(kept.sum(-1).max()) if kind == "per-row" else int(kept.sum())
    if keep == 0 or keep == (gk if kind == "per-row" else gm * gk):
        return None  # nothing or everything kept: order changes nothing
    return _Side(imp, (bm, bk), keep, rows_side, channels, kind == "per-row",
                 link.taps if not rows_side else 1)
