"""A compiled model is for inference: eval() works, train() and torch.jit.script are refused in
one line, torch.export traces it."""

from __future__ import annotations

import pytest
import torch

import gpuprune
from gpuprune.errors import UserError
from gpuprune.models import create_model
from gpuprune.prune import prune


@pytest.fixture(scope="module")
def compiled():
    model = create_model("tiny-cnn", width=4.0)
    prune(model, "tile", 0.75, target="nvidia")
    model.eval()
    return model, gpuprune.compile(model, backend="reference")


@pytest.mark.parametrize("call", [lambda m: m.train(), lambda m: m.train(True)])
def test_train_is_refused_naming_finalize_and_load(compiled, call):
    _, fast = compiled
    with pytest.raises(UserError) as err:
        call(fast)
    line = str(err.value)
    assert "\n" not in line and "finalize" in line and "load" in line
    fast.eval()
    assert not any(m.training for m in fast.modules())


def test_eval_still_works_and_matches(compiled):
    model, fast = compiled
    x = torch.randn(2, 3, 16, 16)
    assert fast.eval() is fast and fast.train(False) is fast
    torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_jit_script_is_refused_in_one_line(compiled):
    _, fast = compiled
    with pytest.raises(UserError, match="torch.jit.script") as err:
        torch.jit.script(fast)
    assert "\n" not in str(err.value)


def test_torch_export_traces_the_compiled_model(compiled):
    model, fast = compiled
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(fast, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)
