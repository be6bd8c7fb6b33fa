"""Small shared pieces for training tests: a learnable synthetic set and a tiny model."""

from __future__ import annotations

import pytest
import torch

from gpuprune.data import ImageData, make_synthetic
from gpuprune.models import create_model


@pytest.fixture(scope="session")
def synth() -> ImageData:
    return make_synthetic(train=384, test=128, channels=1, size=12, seed=1)


@pytest.fixture
def tiny():
    def build(seed: int = 0):
        torch.manual_seed(seed)
        return create_model("tiny-cnn", num_classes=10, in_channels=1, width=1.0)

    return build
