"""Multiple-choice knapsack: one sparsity per layer, least total loss within a cost budget.

Each layer offers options (sparsity, cost, loss), cost being its latency (or its kept weights for
a sparsity budget) and loss the estimated accuracy loss. Two solutions are built and the one with
the smaller total loss is returned:

* greedy on convex hulls: per layer the lower convex hull of (cost saved, loss added), the budget
  spent on the hull segment with the least loss per unit of cost saved, the last segment taken
  only in part so the budget is met exactly (the sparsity interpolated between its two options).
  On convex curves this is the optimum of the relaxed problem (the classic LP bound);
* exact over the options themselves: the Pareto front of (total cost, total loss) built layer by
  layer. Measured loss curves are not convex (a layer's loss can jump between two grid points),
  and there the hull skips options a better allocation needs: on the demo's VGG16 the greedy
  alone chose a plan whose estimated loss was above that of uniform pruning at the same latency.
  With the exact solution in the running, the plan is never estimated worse than any single
  choice of grid options within the budget, uniform ones included.
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
    greedy = _solve_greedy(options, budget)
    exact = _solve_exact(options, budget)
    if exact is not None and total_of(options, exact, "loss") < total_of(options, greedy, "loss"):
        return exact
    return greedy  # exact is None only when no choice fits, and then the greedy raised


# Front points kept per layer step; past it, points closer in cost than 1e-6 of the budget merge
_FRONT_MAX = 20000


def _solve_exact(options: dict[str, list[Option]], budget: float) -> dict[str, float] | None:
    """The least-loss choice of one option per layer within ``budget`` (None: none fits).

    A Pareto front of (cost, loss) over the layers seen so far, each point remembering its
    choice; points costing more than the budget, or no less lossy than a cheaper one, are dropped.
    """
    slack = budget + 1e-12 * max(abs(budget), 1.0)
    names = [n for n, opts in options.items() if opts]
    front: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    rest = [0.0] * (len(names) + 1)  # the cheapest cost of the layers still to come
    for i in range(len(names) - 1, -1, -1):
        rest[i] = rest[i + 1] + min(o.cost for o in options[names[i]])
    for i, name in enumerate(names):
        grown = sorted(
            (c + o.cost, loss + o.loss, picks + (j,))
            for c, loss, picks in front
            for j, o in enumerate(options[name])
            if c + o.cost + rest[i + 1] <= slack
        )
        front, best = [], float("inf")
        merge = 1e-6 * max(abs(budget), 1e-30) if len(grown) > _FRONT_MAX else 0.0
        for point in grown:
            if point[1] < best:
                if merge and front and point[0] - front[-1][0] < merge:
                    front.pop()
                front.append(point)
                best = point[1]
        if not front:
            return None
    picks = min(front, key=lambda p: p[1])[2]
    return {name: options[name][j].sparsity for name, j in zip(names, picks, strict=True)}


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
