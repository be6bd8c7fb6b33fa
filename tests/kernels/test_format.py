"""The packed block format: round trips, what is kept, skippable fraction, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.gemm import block_grid
from gpuprune.kernels import block_for, pack, pack_for
from gpuprune.kernels.testing import block_masked
from gpuprune.prune import METHODS, PruneMethod, kernel_of


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 70),
    k=st.integers(1, 70),
    bm=st.integers(1, 33),
    bk=st.integers(1, 33),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_pack_round_trips_and_keeps_exactly_nonzero_blocks(m, k, bm, bk, density, seed):
    gen = torch.Generator().manual_seed(seed)
    w = block_masked(m, k, (bm, bk), density, gen)
    p = pack(w, (bm, bk))
    assert torch.equal(p.to_dense(), w)
    gm, gk = block_grid((m, k), (bm, bk))
    assert p.row_ptr.dtype == torch.int32 and p.row_ptr.numel() == gm + 1
    assert p.values.shape == (p.nnzb, bm, bk)
    # kept blocks are exactly the blocks with a nonzero, ascending within each row-block
    for i in range(gm):
        cols = p.col_idx[p.row_ptr[i] : p.row_ptr[i + 1]].tolist()
        nonzero = [j for j in range(gk) if w[i * bm : (i + 1) * bm, j * bk : (j + 1) * bk].any()]
        assert cols == nonzero
    assert p.skippable_fraction() == pytest.approx(1 - p.nnzb / (gm * gk))


def test_ragged_edges_are_zero_padded_blocks():
    w = torch.arange(1.0, 1 + 5 * 7).reshape(5, 7)
    p = pack(w, (4, 4))
    assert p.grid == (2, 2) and p.nnzb == 4
    last = p.values[-1]  # rows 4..7, cols 4..7: only [0, :3] real
    assert torch.equal(last[0, :3], w[4, 4:]) and not last[1:].any() and not last[:, 3:].any()


def test_all_zero_and_dense_extremes():
    assert pack(torch.zeros(9, 10), (4, 4)).skippable_fraction() == 1.0
    assert pack(torch.zeros(9, 10), (4, 4)).to_dense().abs().sum() == 0
    assert pack(torch.ones(9, 10), (4, 4)).skippable_fraction() == 0.0
    assert pack(torch.ones(9, 10), (4, 4)).is_balanced()


def test_any_mask_compiles_for_any_target():
    """A mask pruned with one target's blocks is packed for another; values are preserved."""
    gen = torch.Generator().manual_seed(0)
    nvidia, pocl = get_target("nvidia"), get_target("cpu-pocl")
    w = block_masked(130, 200, nvidia.tile_block(), 0.4, gen)
    for variant in ("tile", "simd"):
        p = pack_for(w, pocl, variant)
        assert p.block == block_for(pocl, variant)
        assert torch.equal(p.to_dense(), w)
        assert 0.0 < p.skippable_fraction() < 1.0


def test_variant_mapping():
    t = get_target("nvidia")
    assert block_for(t, "tile") == (64, 32) == block_for(t, "dense")
    assert block_for(t, "simd") == t.simd_block()
    assert kernel_of("simd-balanced") == "simd"
    assert kernel_of("unstructured") == "tile"


def test_every_method_declares_a_kernel_and_user_methods_can_too():
    assert {kernel_of(name) for name in METHODS} <= {"tile", "simd"}

    class RowPairs(PruneMethod):
        name = "row-pairs-test"
        kernel = "simd"

        def unit(self, layer):
            return (2, 1)

    assert kernel_of(RowPairs) == "simd" == kernel_of(RowPairs())


@pytest.mark.parametrize(
    "matrix,block,needle",
    [
        (torch.zeros(2, 3, 4), (2, 2), r"\[M, K\] matrix"),
        (torch.zeros(4, 4, dtype=torch.int32), (2, 2), "floating-point"),
        (torch.zeros(4, 4), (0, 2), "positive"),
    ],
)
def test_bad_input_is_one_line_user_error(matrix, block, needle):
    with pytest.raises(UserError, match=needle) as err:
        pack(matrix, block)
    assert "\n" not in str(err.value)


def test_unknown_variant():
    with pytest.raises(UserError, match="variant"):
        block_for(get_target("nvidia"), "warp")
