"""Importance scores: magnitude, l2, taylor (gradients from data) and random."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuprune.errors import UserError
from gpuprune.prune import IMPORTANCES, Pruner, get_mask


def test_taylor_is_weight_times_mean_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    data = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(3)]
    w = model[0].weight
    grads = [torch.autograd.grad(nn.functional.cross_entropy(model(x), y), w)[0] for x, y in data]
    expected = (w * torch.stack(grads).mean(0)).abs().detach()
    pruner = Pruner(
        model, "unstructured", importance="taylor", exclude_first_last=False, input_size=(6,)
    )
    pruner.apply(0.5, data=data)
    kept = get_mask(model[0])
    # the kept half are the largest Taylor scores
    assert expected[kept].min() >= expected[~kept].max()


def test_taylor_without_data_is_a_user_error():
    pruner = Pruner(nn.Sequential(nn.Linear(4, 4)), "unstructured", importance="taylor",
                    exclude_first_last=False, input_size=(4,))  # fmt: skip
    with pytest.raises(UserError, match="needs data"):
        pruner.apply(0.5)


def test_random_scores_never_revive_pruned_weights():
    w = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    score = IMPORTANCES.get("random").score(w, None)
    assert score[0, 0] == 0 and score[1, 1] == 0


def test_l2_and_magnitude_rank_alike_per_weight():
    w = torch.randn(10, 10)
    m, l2 = IMPORTANCES.get("magnitude").score(w, None), IMPORTANCES.get("l2").score(w, None)
    assert torch.equal(m.flatten().argsort(), l2.flatten().argsort())


def test_unknown_importance_lists_the_valid_ones():
    with pytest.raises(UserError, match="magnitude"):
        Pruner(nn.Sequential(nn.Linear(4, 4)), "unstructured", importance="hessian")


def test_finite_check_takes_huge_weights_for_finite_and_catches_inf():
    # the check is one float32 sum first: huge finite weights overflow it, and must still pass
    model = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight.fill_(3e38)
        model[0].weight[0, :4] = 1.0
    result = Pruner(model, "unstructured", exclude_first_last=False, input_size=(8,)).apply(0.25)
    assert result.layers[0].sparsity == 0.25
    model = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight[3, 5] = float("-inf")
    with pytest.raises(UserError, match="NaN or infinite"):
        Pruner(model, "unstructured", exclude_first_last=False, input_size=(8,)).apply(0.25)
