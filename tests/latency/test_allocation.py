"""allocation="latency": registered with the pruner, meets its budget, spends loss where cheap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpuprune.latency  # noqa: F401 - registers the allocation
from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.gemm import block_reduce, gemm_view
from gpuprune.latency import LatencyModel, geometry_of, plan_latency
from gpuprune.latency.solver import total_of
from gpuprune.prune import ALLOCATIONS, Pruner, allocate, get_method, prune

SMALL = Target(
    name="test-small", vendor="cpu", simd_width=8, max_work_group_size=256,
    local_mem_bytes=64 * 1024, compute_units=1, mwg=16, nwg=16, kwg=16, mdimc=4, ndimc=4,
)  # fmt: skip


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),  # "2": 32x144
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),  # "4": 48x288, the slow one
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10),
    )  # fmt: skip


def setup():
    model = tiny()
    pruner = Pruner(model, "tile", target=SMALL, allocation="latency", input_size=(3, 8, 8))
    imps = {n: gemm_view(s.module.weight).detach().abs() for n, s in pruner.specs.items()}
    return model, pruner, imps


def fake_evaluate(weights: dict[str, float]):
    """Held-out loss: 1 plus, for the layer pruned, weight x (pruned fraction)^2."""

    def evaluate(name, mask):
        if name is None:
            return 1.0
        return 1.0 + weights[name] * (1.0 - mask.float().mean().item()) ** 2

    return evaluate


def test_registered_and_usable_through_prune():
    assert "latency" in ALLOCATIONS.names()
    model = tiny()
    result = prune(model, "tile", 0.5, target=SMALL, allocation="latency", input_size=(3, 8, 8))
    assert result.allocation == "latency"
    assert result.sparsity == pytest.approx(0.5, abs=0.1)  # sparsity budget: no latency budget


def test_latency_budget_met_and_beats_uniform():
    _, pruner, imps = setup()
    method = get_method("tile")
    lm = LatencyModel("analytical", SMALL, "tile")
    evaluate = fake_evaluate({"2": 10.0, "4": 0.1})  # "4" is cheap to prune and slow to run
    plan = plan_latency(
        0.0, pruner.specs, imps, method, evaluate, latency_budget=0.6, latency_model=lm
    )
    assert plan.latency_ms <= 0.6 * plan.dense_ms * 1.02
    assert plan.sparsities["4"] > plan.sparsities["2"]
    # uniform at the same estimated latency loses more
    lo, hi = 0.0, 0.9375
    for _ in range(50):
        mid = (lo + hi) / 2
        cost = total_of(plan.options, dict.fromkeys(plan.options, mid), "cost")
        lo, hi = (lo, mid) if cost <= plan.latency_ms else (mid, hi)
    uniform = total_of(plan.options, dict.fromkeys(plan.options, hi), "loss")
    assert plan.loss < 0.5 * uniform
    # the real masks at those sparsities land near the budget on the latency model
    ms = 0.0
    for name, spec in pruner.specs.items():
        mask = method.mask(imps[name], plan.sparsities[name], spec)
        kept = float(block_reduce(mask, SMALL.tile_block(), "any").float().mean())
        ms += lm.curve(geometry_of(name, spec.module, spec.in_hw)).__call__(kept)
    assert ms == pytest.approx(0.6 * plan.dense_ms, rel=0.15)


def test_through_allocate_with_options():
    _, pruner, imps = setup()
    for method_name in ("tile", "simd", "simd-balanced"):
        alloc = allocate(
            "latency", 0.5, pruner.specs, importances=imps, method=get_method(method_name),
            evaluate=None, latency_budget=0.8, latency_target=SMALL,
        )  # fmt: skip
        assert set(alloc) == set(pruner.specs)
        assert all(0.0 <= s < 1.0 for s in alloc.values())
    with pytest.raises(UserError, match="no option"):
        allocate(
            "latency", 0.5, pruner.specs, importances=imps, method=get_method("tile"),
            latency_budjet=0.5,
        )  # fmt: skip
    with pytest.raises(UserError, match="outside"):
        allocate(
            "latency", 0.5, pruner.specs, importances=imps, method=get_method("tile"),
            latency_budget=1.5,
        )  # fmt: skip


def test_unstructured_saves_no_tile_latency():
    # scattered zeros leave every tile block non-empty: no budget below ~dense is reachable
    _, pruner, imps = setup()
    torch.manual_seed(0)
    with pytest.raises(UserError, match="budget"):
        plan_latency(
            0.0, pruner.specs, {n: torch.rand_like(v) for n, v in imps.items()},
            get_method("unstructured"), latency_budget=0.5, latency_target=SMALL,
        )  # fmt: skip


def test_each_layer_modelled_with_its_own_tiling():
    from gpuprune.latency import analytical_ms, tilings, use_layer_targets

    _, pruner, imps = setup()
    other = next(t for t in tilings(SMALL) if t.tile_block() == (16, 32))
    use_layer_targets(pruner, {"4": other})
    plan = plan_latency(
        0.0, pruner.specs, imps, get_method("tile"), latency_budget=0.9, grid=(0.5,)
    )
    for name, tgt in (("2", SMALL), ("4", other)):
        spec = pruner.specs[name]
        dense = analytical_ms(geometry_of(name, spec.module, spec.in_hw), tgt, "tile", 1.0)
        assert plan.options[name][0].cost == pytest.approx(dense)


def test_budget_in_ms_is_met_and_unreachable_is_a_budget_error():
    from gpuprune.latency.solver import BudgetError

    _, pruner, imps = setup()
    method = get_method("tile")
    full = plan_latency(0.5, pruner.specs, imps, method, latency_budget=1.0,
                        latency_target=SMALL)  # fmt: skip
    half = plan_latency(0.5, pruner.specs, imps, method, latency_budget_ms=full.dense_ms / 2,
                        latency_target=SMALL)  # fmt: skip
    assert half.latency_ms == pytest.approx(full.dense_ms / 2, rel=1e-6)
    unstructured = get_method("unstructured")  # scattered zeros never empty a 16x16 tile
    with pytest.raises(BudgetError, match="below the cheapest"):
        plan_latency(0.5, pruner.specs, imps, unstructured, latency_budget_ms=full.dense_ms / 2,
                     latency_target=SMALL)  # fmt: skip
    with pytest.raises(UserError, match="not positive"):
        plan_latency(0.5, pruner.specs, imps, method, latency_budget_ms=0.0, latency_target=SMALL)


def test_unreachable_budget_is_refused_before_any_loss_is_measured():
    from gpuprune.latency.solver import BudgetError

    _, pruner, imps = setup()
    full = plan_latency(0.5, pruner.specs, imps, get_method("tile"), latency_budget=1.0,
                        latency_target=SMALL)  # fmt: skip
    calls = []

    def evaluate(name, mask):
        calls.append(name)
        return 0.0

    with pytest.raises(BudgetError, match="below the cheapest"):
        plan_latency(0.5, pruner.specs, imps, get_method("unstructured"), evaluate,
                     latency_budget_ms=full.dense_ms / 2, latency_target=SMALL)  # fmt: skip
    assert calls == []  # the model never ran: the costs alone showed it unreachable
    plan_latency(0.5, pruner.specs, imps, get_method("tile"), evaluate,
                 latency_budget_ms=full.dense_ms / 2, latency_target=SMALL)  # fmt: skip
    assert calls  # a reachable budget measures the losses as before


def pooled() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # "2": its pool is fused
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10),
    )  # fmt: skip


class PoolPriced:
    """A latency model whose pooled convs cost three times as much (the pool runs in the store),
    noting every geometry it is asked to price."""

    target, variant = SMALL, "tile"

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def curve(self, geom):
        self.seen[geom.name] = geom
        scale = 3.0 if geom.pool else 1.0
        return lambda kept: scale * (0.2 + kept)


def test_pruner_prices_a_fused_pool_as_compile_runs_it():
    lm = PoolPriced()
    pruner = Pruner(pooled(), "tile", target=SMALL, allocation="latency", input_size=(3, 8, 8),
                    allocation_options={"latency_model": lm, "latency_budget": 0.7})  # fmt: skip
    pruner.apply(0.5)
    assert lm.seen["2"].pool == "floor"
    assert lm.seen["5"].pool is None


def test_the_reference_budget_and_the_options_priced_alike():
    # the experiment prices its uniform reference on the model's geometries (pools included);
    # the plan's options must be priced on the same ones, or the budget means another latency:
    # here uniform pruning at the reference's own sparsity is then exactly the only fit
    from gpuprune.experiment.equal_latency import _modelled_ms
    from gpuprune.latency import model_geometries

    model = pooled()
    pruner = Pruner(model, "tile", target=SMALL, input_size=(3, 8, 8))
    imps = {n: gemm_view(s.module.weight).detach().abs() for n, s in pruner.specs.items()}
    geoms = model_geometries(model, 1, (3, 8, 8), names=list(pruner.specs))
    assert geoms["2"].pool == "floor"
    lm = PoolPriced()
    budget = sum(_modelled_ms(pruner, imps, 0.5, geoms, lm).values())
    plan = plan_latency(0.5, pruner.specs, imps, get_method("tile"), latency_budget_ms=budget,
                        latency_model=lm, geometries=geoms, grid=(0.5,))  # fmt: skip
    assert plan.sparsities == dict.fromkeys(pruner.specs, 0.5)
    assert plan.latency_ms == pytest.approx(budget)


def test_an_allocator_without_the_model_keyword_still_runs():
    # user allocators registered before the pruner passed ``model`` take only the old keywords
    def halves(sparsity, specs, importances, method, evaluate=None, progress=None):
        return dict.fromkeys(specs, 0.5)

    ALLOCATIONS.register("test-halves")(halves)
    try:
        result = prune(tiny(), "tile", 0.75, target=SMALL, allocation="test-halves",
                       input_size=(3, 8, 8))  # fmt: skip
        assert {lr.requested for lr in result.layers} == {0.5}
    finally:
        ALLOCATIONS._items.pop("test-halves", None)
