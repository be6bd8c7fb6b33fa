"""Multiple-choice knapsack: one sparsity per layer, least total loss within a cost budget.

Each layer offers options (sparsity, cost, loss), cost being its latency (or its kept weights for
a sparsity budget) and loss the estimated accuracy loss. Two solutions are built and the one with
the smaller total loss is returned:

* greedy on convex hulls: per layer the lower convex hull of (cost saved, loss added), the budget
  spent on the hull segment with the least loss per unit of cost saved, the last segment taken
  only in part so the budget is met exactly (the sparsity interpolated between its two options).
  On convex curves this is the optimum of the relaxed problem (the classic LP bound);
* exact over the options themselves: the Pareto front of (total cost, total loss) built layer by
  layer. Measured loss curves are not convex (the demo's VGG16: a layer at 0.28 at 75% and 1.07
  at 87.5%), and there the hull skips options; rounding its relaxed answer can then lose to a
  plain choice of grid options. With the exact solution in the running, the plan is never
  estimated worse than any choice of grid options within the budget, uniform ones included.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from gpuprune.errors import UserError


class BudgetError(UserError):
    """No allocation fits the budget (the method cannot get that fast or that sparse)."""


@dataclass(frozen=True)
class Option:
    """One choice for one layer."""

    sparsity: float
    cost: float  # latency (ms) or kept weights
    loss: float  # estimated loss increase


def _hull(options: list[Option]) -> list[Option]:
    """Options on the lower convex hull of (cost saved, loss added), from the costliest one."""
    start = max(options, key=lambda o: (o.cost, -o.loss))
    pts: dict[float, Option] = {}
    for o in options:
        saved = start.cost - o.cost
        if saved < 0:
            continue
        if saved not in pts or o.loss < pts[saved].loss:
            pts[saved] = o
    ordered = [pts[s] for s in sorted(pts)]
    hull = [ordered[0]]
    for o in ordered[1:]:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the line a-o (or on it): drop it
            cross = (a.cost - b.cost) * (o.loss - a.loss) - (a.cost - o.cost) * (b.loss - a.loss)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def solve(options: dict[str, list[Option]], budget: float) -> dict[str, float]:
    """Per-layer sparsities whose total cost is at most ``budget``, with the least total loss.

    Args:
        options: per layer its options; one of them must be the layer's costliest (usually dense).
        budget: the largest total cost allowed.

    Raises:
        UserError: even the cheapest option of every layer exceeds the budget.
    """
    greedy = _solve_greedy(options, budget)
    exact = _solve_exact(options, budget)
    if exact is not None and total_of(options, exact, "loss") < total_of(options, greedy, "loss"):
        return exact
    return greedy  # exact is None only when no choice fits, and then the greedy raised


# Points kept on the front after each layer: past it, the front keeps the least lossy point per
# budget / _FRONT_MAX of cost (0.05% of the budget: finer than the latency curves are known)
_FRONT_MAX = 2000


def _solve_exact(options: dict[str, list[Option]], budget: float) -> dict[str, float] | None:
    """The least-loss choice of one option per layer within ``budget`` (None: none fits).

    A Pareto front of (cost, loss) over the layers seen so far: after each layer, points that
    cannot fit the budget with the cheapest options of the layers still to come, or that are
    no less lossy than a cheaper point, are dropped. Exact while the front stays under
    ``_FRONT_MAX`` points; past that, costs are resolved to ``budget / _FRONT_MAX``.
    """
    slack = budget + 1e-12 * max(abs(budget), 1.0)
    names = [n for n, opts in options.items() if opts]
    rest = np.zeros(len(names) + 1)  # the cheapest cost of the layers still to come
    for i in range(len(names) - 1, -1, -1):
        rest[i] = rest[i + 1] + min(o.cost for o in options[names[i]])
    cost, loss = np.zeros(1), np.zeros(1)
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: (parent point, option) per point
    for i, name in enumerate(names):
        c = np.array([o.cost for o in options[name]])
        lo = np.array([o.loss for o in options[name]])
        cost = (cost[:, None] + c[None, :]).ravel()
        loss = (loss[:, None] + lo[None, :]).ravel()
        parent, pick = np.divmod(np.arange(cost.size), c.size)
        keep = cost + rest[i + 1] <= slack
        cost, loss, parent, pick = cost[keep], loss[keep], parent[keep], pick[keep]
        if not cost.size:
            return None
        order = np.lexsort((loss, cost))
        cost, loss, parent, pick = cost[order], loss[order], parent[order], pick[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(loss)[:-1]])
        pareto = loss < best_before
        cost, loss, parent, pick = cost[pareto], loss[pareto], parent[pareto], pick[pareto]
        if cost.size > _FRONT_MAX:  # the last (least lossy) point of each cost bucket
            bucket = np.floor(cost / (max(abs(budget), 1e-30) / _FRONT_MAX))
            last = np.append(bucket[1:] != bucket[:-1], True)
            cost, loss, parent, pick = cost[last], loss[last], parent[last], pick[last]
        trail.append((parent, pick))
    at = int(np.argmin(loss))
    choice: dict[str, float] = {}
    for name, (parent, pick) in zip(reversed(names), reversed(trail), strict=True):
        choice[name] = options[name][int(pick[at])].sparsity
        at = int(parent[at])
    return {name: choice[name] for name in names}


def _solve_greedy(options: dict[str, list[Option]], budget: float) -> dict[str, float]:
    """The convex-hull greedy with its last step taken in part (module docstring)."""
    hulls = {name: _hull(opts) for name, opts in options.items() if opts}
    at = dict.fromkeys(hulls, 0)
    choice = {name: h[0].sparsity for name, h in hulls.items()}
    total = sum(h[0].cost for h in hulls.values())
    heap: list[tuple[float, int, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], at[name]
        if i + 1 < len(h):
            a, b = h[i], h[i + 1]
            heapq.heappush(heap, ((b.loss - a.loss) / (a.cost - b.cost), len(heap), name))

    for name in hulls:
        push(name)
    while total > budget + 1e-12 * max(abs(budget), 1.0):
        if not heap:
            cheapest = sum(h[-1].cost for h in hulls.values())
            raise BudgetError(
                f"the budget {budget:.4g} is below the cheapest allocation ({cheapest:.4g})",
                "raise the budget (a latency budget is a fraction of the dense latency)",
            )
        _, _, name = heapq.heappop(heap)
        h, i = hulls[name], at[name]
        a, b = h[i], h[i + 1]
        need = total - budget
        if a.cost - b.cost >= need:  # the last step, taken in part
            choice[name] = _part_way(options[name], a, b, a.cost - need)
            return choice
        total -= a.cost - b.cost
        at[name] = i + 1
        choice[name] = b.sparsity
        push(name)
    return choice


def _part_way(options: list[Option], a: Option, b: Option, cost: float) -> float:
    """The sparsity between hull options ``a`` and ``b`` whose cost is ``cost``, the cost read
    as :func:`total_of` reads it: linear between the neighbouring options by sparsity. A hull
    segment can skip options (where the loss curve is not convex); interpolating along the
    segment itself would then cost more than the budget allows."""
    inner = sorted((o for o in options if a.sparsity <= o.sparsity <= b.sparsity),
                   key=lambda o: o.sparsity)  # fmt: skip
    for lo, hi in zip(inner, inner[1:], strict=False):
        if hi.cost <= cost <= lo.cost and hi.sparsity > lo.sparsity:
            frac = 0.0 if lo.cost == hi.cost else (lo.cost - cost) / (lo.cost - hi.cost)
            return lo.sparsity + frac * (hi.sparsity - lo.sparsity)
    return b.sparsity  # costs not monotone between them: b itself is within the budget


def total_of(options: dict[str, list[Option]], choice: dict[str, float], what: str) -> float:
    """Total ``"cost"`` or ``"loss"`` of a choice, interpolating between a layer's options."""
    out = 0.0
    for name, opts in options.items():
        xs = sorted(opts, key=lambda o: o.sparsity)
        s = choice[name]
        lo = max((o for o in xs if o.sparsity <= s), key=lambda o: o.sparsity, default=xs[0])
        hi = min((o for o in xs if o.sparsity >= s), key=lambda o: o.sparsity, default=xs[-1])
        ya, yb = getattr(lo, what), getattr(hi, what)
        span = hi.sparsity - lo.sparsity
        out += ya if span <= 0 else ya + (s - lo.sparsity) / span * (yb - ya)
    return out
