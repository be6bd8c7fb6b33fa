"""Fixtures for the pruning tests."""

from __future__ import annotations

import pytest
from prune_helpers import SMALL

from gpuprune.arch import Target


@pytest.fixture
def small_target() -> Target:
    return SMALL
