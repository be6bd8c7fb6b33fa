"""Fixtures for the latency tests: a private cache folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # never touch the user's ~/.cache (one thread and the seed: the root conftest)
    monkeypatch.setenv("GPUPRUNE_LATENCY_CACHE", str(tmp_path / "latency-cache"))
