"""Multiple-choice knapsack: one sparsity per layer, least total loss within a cost budget.

Each layer offers options (sparsity, cost, loss), cost being its latency (or its kept weights for
a sparsity budget) and loss the estimated accuracy loss. The solver takes, per layer, the lower
convex hull of (cost saved, loss added) and spends the budget greedily on the hull segment with
the least loss per unit of cost saved, taking the last segment only in part so the budget is met
exactly (the sparsity is interpolated between the two options of that segment). On convex hulls
this greedy is the optimum of the relaxed problem (the classic LP bound of the knapsack).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

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
            frac = need / (a.cost - b.cost)
            choice[name] = a.sparsity + frac * (b.sparsity - a.sparsity)
            return choice
        total -= a.cost - b.cost
        at[name] = i + 1
        choice[name] = b.sparsity
        push(name)
    return choice


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
