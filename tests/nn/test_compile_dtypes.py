"""compile() and model dtypes: backends that run float32 only refuse half models in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuprune import compile as gp_compile
from gpuprune.errors import UserError


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_backend_refuses_half_model(dtype):
    model = nn.Sequential(nn.Linear(8, 4)).to(dtype)
    with pytest.raises(UserError, match="reference backend's kernels run float32") as info:
        gp_compile(model, "cpu-pocl", backend="reference", verbose=False)
    message = str(info.value)
    assert "model.float()" in message and "backend='triton'" in message
    assert "\n" not in message


def test_float64_model_is_refused_with_the_fix():
    model = nn.Sequential(nn.Linear(8, 4)).double()
    with pytest.raises(UserError, match="model.float"):
        gp_compile(model, "cpu-pocl", backend="reference", verbose=False)
