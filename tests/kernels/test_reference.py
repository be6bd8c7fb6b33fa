"""The reference backend (the oracle) against plain PyTorch, and the shared input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import from_gemm
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import BACKENDS, backend_names, get_backend, pack_for
from gpuprune.kernels.testing import assert_close_rel, block_masked

TARGET = get_target("cpu-pocl")


@pytest.mark.parametrize("variant", ["dense", "tile", "simd"])
def test_conv_matches_masked_dense(variant):
    gen = torch.Generator().manual_seed(1)
    block = TARGET.simd_block() if variant == "simd" else TARGET.tile_block()
    w = block_masked(37, 5 * 3 * 2, block, 0.5, gen)
    b = torch.randn(37, generator=gen)
    x = torch.randn(2, 5, 9, 8, generator=gen)
    conv = get_backend("reference").conv2d(
        pack_for(w, TARGET, variant), b, TARGET, variant=variant,
        geometry=ConvGeometry(5, (3, 2), (2, 1), (1, 0), (1, 2)), relu=True,
    )
    ref = F.relu(F.conv2d(x, from_gemm(w, (37, 5, 3, 2)), b, (2, 1), (1, 0), (1, 2)))
    assert_close_rel(conv(x), ref)


def test_linear_matches_masked_dense():
    gen = torch.Generator().manual_seed(2)
    w = block_masked(45, 70, TARGET.tile_block(), 0.5, gen)
    x = torch.randn(3, 70, generator=gen)
    lin = get_backend("reference").linear(pack_for(w, TARGET, "tile"), None, TARGET, variant="tile")
    assert_close_rel(lin(x), x @ w.T)


def test_registry_lists_reference_and_rejects_unknown():
    assert "reference" in backend_names() and "reference" in BACKENDS
    with pytest.raises(UserError, match="unknown backend 'cuda-magic'"):
        get_backend("cuda-magic")


def test_bad_inputs_are_one_line_user_errors():
    ref = get_backend("reference")
    w = torch.randn(8, 27)
    conv = ref.conv2d(
        pack_for(w, TARGET, "tile"), None, TARGET, variant="tile",
        geometry=ConvGeometry(3, (3, 3), (1, 1), (1, 1), (1, 1)),
    )
    cases = [
        (lambda: conv(torch.randn(1, 3, 5, 5, dtype=torch.float64)), "float32"),
        (lambda: conv(torch.randn(1, 4, 5, 5)), "4-d input with 3 channels"),
        (  # packed weight does not match the layer (K = 27 vs 4*3*3)
            lambda: ref.conv2d(
                pack_for(w, TARGET, "tile"), None, TARGET, variant="tile",
                geometry=ConvGeometry(4, (3, 3), (1, 1), (0, 0), (1, 1)),
            ),
            "does not match the model",
        ),
        (  # packed for tile skipping but run as SIMD skipping
            lambda: ref.linear(pack_for(w, TARGET, "tile"), None, TARGET, variant="simd"),
            "pack_for",
        ),
    ]
    for call, needle in cases:
        with pytest.raises(UserError, match=needle) as err:
            call()
        assert "\n" not in str(err.value)
