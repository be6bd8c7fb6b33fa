"""The first call works: defaults, torch's argument names, and one-line errors for slips."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import gpuprune
from gpuprune.errors import UserError
from gpuprune.models import create_model
from gpuprune.prune import finalize, get_mask, prune


class SE(nn.Module):
    """A CNN with a squeeze-and-excitation pair (4 channels: smaller than one block)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.body = nn.Conv2d(64, 64, 3, padding=1)
        self.squeeze = nn.Conv2d(64, 4, 1)
        self.excite = nn.Conv2d(4, 64, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.body(self.stem(x))
        x = x * torch.sigmoid(self.excite(self.squeeze(x.mean((2, 3), keepdim=True))))
        return self.head(x.mean((2, 3)))


def test_layers_smaller_than_a_block_stay_dense_by_default_and_are_listed(caplog):
    model = SE()
    with caplog.at_level(logging.INFO, logger="gpuprune.prune.api"):
        result = prune(model, "tile", 0.5, target="nvidia")
    skipped = {s.name: s.reason for s in result.skipped}
    assert "excite" in skipped and "squeeze" in skipped
    assert "body" not in skipped and get_mask(model.body) is not None
    assert "squeeze" in caplog.text
    with pytest.raises(UserError):
        prune(SE(), "tile", 0.5, target="nvidia", skip_small=False)


def test_example_inputs_give_the_flops_at_the_real_resolution():
    model = create_model("tiny-cnn", width=4.0)
    small = prune(copy.deepcopy(model), "tile", 0.5, target="nvidia")  # (3, 32, 32) guess
    x = torch.randn(2, 3, 64, 64)
    big = prune(model, "tile", 0.5, target="nvidia", example_inputs=(x,))
    assert big.layers[0].flops_dense == 4 * small.layers[0].flops_dense
    # a bare tensor is taken as the one argument
    again = prune(create_model("tiny-cnn", width=4.0), "tile", 0.5, target="nvidia",
                  example_inputs=x)  # fmt: skip
    assert again.layers[0].flops_dense == big.layers[0].flops_dense


def test_the_input_hint_names_the_layer_kind():
    tokens = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64))
    with pytest.raises(UserError) as err:
        prune(tokens, "unstructured", 0.5, input_size=(5,), exclude_first_last=False)
    assert "(C, H, W)" not in str(err.value) and "example_inputs" in str(err.value)


def test_amount_is_an_alias_of_sparsity():
    model = create_model("tiny-cnn", width=4.0)
    result = prune(model, "unstructured", amount=0.6)
    assert abs(result.requested - 0.6) < 1e-9
    with pytest.raises(UserError, match="both"):
        prune(create_model("tiny-cnn"), "unstructured", sparsity=0.5, amount=0.6)


def test_names_are_case_insensitive():
    assert gpuprune.get_target("CPU-POCL").name == "cpu-pocl"
    result = prune(create_model("tiny-cnn", width=4.0), "TILE", 0.5, target="NVIDIA")
    assert result.method == "tile" and result.target.name == "nvidia"


@pytest.mark.parametrize("call, needle", [
    (lambda m, r: gpuprune.compile(r, backend="reference"), "pass the model; the result is"),
    (lambda m, r: prune(r, "tile", 0.5, target="nvidia"), "pass the model; the result is"),
    (lambda m, r: prune(m, "tile", "0.5", target="nvidia"), "must be a number"),
    (lambda m, r: prune(m, "tile", True, target="nvidia"), "must be a number"),
    (lambda m, r: prune(m, 3, 0.5, target="nvidia"), "not a name"),
    (lambda m, r: prune(m, "tile", 0.5, target=7), "not a preset name"),
    (lambda m, r: prune(m, "tile", 0.5, target="nvidia", skip_smal=True), "skip_smal"),
    (lambda m, r: gpuprune.compile(m, backend=1), "backend is a int"),
])  # fmt: skip
def test_type_slips_give_one_line_errors(call, needle):
    model = create_model("tiny-cnn", width=4.0)
    result = prune(model, "tile", 0.5, target="nvidia")
    with pytest.raises(UserError) as err:
        call(model, result)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_finalize_on_a_deep_copy_keeps_the_original():
    model = create_model("tiny-cnn", width=4.0)
    prune(model, "unstructured", 0.5)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    want = model(x)
    copied = finalize(copy.deepcopy(model))
    assert get_mask(model.features[4]) is not None  # the original is still masked
    assert torch.equal(model(x), want) and torch.equal(copied.eval()(x), want)
    finalize(model)  # and can itself be finalized afterwards
    assert torch.equal(model(x), want)
