"""Property tests of the mask shapes every method produces (hypothesis over shapes/targets)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_helpers import SMALL, spec

from gpuprune.arch import get_target, list_targets
from gpuprune.prune.methods import get_method

PRESETS = list_targets()
BLOCK_METHODS = ["tile", "simd", "simd-balanced"]
FAST = settings(max_examples=25, deadline=None)


def unit_of(method: str, target) -> tuple[int, int]:
    return target.tile_block() if method == "tile" else target.simd_block()


@st.composite
def layer_case(draw, methods=tuple(BLOCK_METHODS), max_blocks=4):
    """(method, target, M, K, sparsity) with M, K from one block up to max_blocks, ragged."""
    method = draw(st.sampled_from(methods))
    target = get_target(draw(st.sampled_from(PRESETS)))
    bm, bk = unit_of(method, target)
    kmax = max_blocks * bk if bk > 1 else 96  # SIMD vectors are 1 wide: keep K small
    m = draw(st.integers(bm, max_blocks * bm + bm - 1))
    k = draw(st.integers(bk, kmax + bk - 1))
    s = draw(st.floats(0.0, 0.95))
    return method, target, m, k, s


def block_ids(m: int, k: int, block: tuple[int, int]) -> torch.Tensor:
    """[M, K] id of the block each element belongs to (ragged edges are their own blocks)."""
    bm, bk = block
    gk = -(-k // bk)
    return (torch.arange(m)[:, None] // bm) * gk + torch.arange(k)[None, :] // bk


def is_union_of_blocks(mask: torch.Tensor, block: tuple[int, int]) -> bool:
    ids = block_ids(*mask.shape, block).flatten()
    vals = mask.flatten().long()
    n = int(ids.max()) + 1
    lo = torch.full((n,), 2).scatter_reduce(0, ids, vals, "amin")
    hi = torch.full((n,), -1).scatter_reduce(0, ids, vals, "amax")
    return bool((lo == hi).all())


@FAST
@given(layer_case())
def test_block_masks_are_unions_of_whole_blocks(case):
    method, target, m, k, s = case
    layer = spec(m, k, target)
    mask = get_method(method).mask(torch.rand(m, k), s, layer)
    assert mask.shape == (m, k) and mask.dtype == torch.bool
    assert is_union_of_blocks(mask, unit_of(method, target))
    assert mask.any()  # a layer never goes dead


@FAST
@given(layer_case(methods=("tile", "simd")))
def test_sparsity_within_one_block_per_layer(case):
    method, target, m, k, s = case
    mask = get_method(method).mask(torch.rand(m, k), s, spec(m, k, target))
    bm, bk = unit_of(method, target)
    pruned = int((~mask).sum())
    assert abs(pruned - s * m * k) <= bm * bk


@FAST
@given(layer_case(methods=("simd-balanced",)))
def test_simd_balanced_counts_equal_per_row_group(case):
    _, target, m, k, s = case
    mask = get_method("simd-balanced").mask(torch.rand(m, k), s, spec(m, k, target))
    r, kc = target.simd_block()
    kept_vectors = [
        sum(bool(mask[i : i + r, j : j + kc].any()) for j in range(0, k, kc))
        for i in range(0, m, r)
    ]
    assert len(set(kept_vectors)) == 1
    gk = -(-k // kc)
    assert kept_vectors[0] == max(1, round((1 - s) * gk))
    # within one vector per row-group of the request
    assert abs(int((~mask).sum()) - s * m * k) <= len(kept_vectors) * r * kc


@FAST
@given(
    st.integers(1, 40),
    st.integers(1, 200),
    st.integers(1, 48),
    st.floats(0.0, 0.99),
)
def test_balanced_counts_are_exact(m, k, bank, s):
    mask = get_method("balanced", bank=bank).mask(torch.rand(m, k), s, spec(m, k, None))
    for start in range(0, k, bank):
        r = min(bank, k - start)
        counts = mask[:, start : start + r].sum(dim=1)
        assert (counts == max(1, round((1 - s) * r))).all()


@FAST
@given(
    st.integers(1, 40),
    st.integers(1, 200),
    st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 8)]),
)
def test_nm_counts_are_exact(m, k, nm):
    n, mm = nm
    mask = get_method("nm", n=n, m=mm).mask(torch.rand(m, k), 0.0, spec(m, k, None))
    for start in range(0, k, mm):
        r = min(mm, k - start)
        assert (mask[:, start : start + r].sum(dim=1) == min(n, r)).all()


def test_nm_default_is_two_four_at_half_sparsity():
    mask = get_method("nm").mask(torch.rand(8, 64), 0.5, spec(8, 64, None))
    assert (mask.view(8, 16, 4).sum(-1) == 2).all()


# ---- brute force: the highest-importance blocks are kept ---------------------------------------
def brute_block_means(imp: torch.Tensor, block: tuple[int, int]) -> dict[tuple[int, int], float]:
    """Mean importance of every block, by explicit loops over its real elements."""
    m, k = imp.shape
    bm, bk = block
    out = {}
    for i0 in range(0, m, bm):
        for j0 in range(0, k, bk):
            vals = [
                float(imp[i, j])
                for i in range(i0, min(i0 + bm, m))
                for j in range(j0, min(j0 + bk, k))
            ]
            out[(i0 // bm, j0 // bk)] = sum(vals) / len(vals)
    return out


def best_keep_set(means: dict, n_keep: int) -> set:
    """Exhaustively: the set of n_keep blocks with the largest total mean score."""
    return set(max(itertools.combinations(means, n_keep), key=lambda c: sum(means[b] for b in c)))


def kept_blocks(mask: torch.Tensor, block: tuple[int, int]) -> set:
    bm, bk = block
    m, k = mask.shape
    return {
        (i // bm, j // bk) for i in range(0, m, bm) for j in range(0, k, bk) if bool(mask[i, j])
    }


# (rows, k) drawing limits per method, so every layer has at most 9 blocks
SMALL_LAYERS = {
    "tile": (48, 48),
    "simd": (24, 3),
    "unstructured": (3, 3),
    "filter": (9, 20),
    "ssl": (20, 9),
}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(SMALL_LAYERS)), st.floats(0.0, 0.95), st.data())
def test_highest_importance_blocks_are_kept(method, s, data):
    max_m, max_k = SMALL_LAYERS[method]
    m, k = data.draw(st.integers(1, max_m)), data.draw(st.integers(1, max_k))
    layer = spec(m, k, SMALL)
    meth = get_method(method)
    unit = meth.unit(layer)
    imp = torch.rand(m, k)
    mask = meth.mask(imp, s, layer)
    means = brute_block_means(imp, unit)
    kept = kept_blocks(mask, unit)
    assert len(means) <= 9
    assert kept == best_keep_set(means, len(kept))
    # and the count is the one closest to the request (at least one block kept)
    sizes = {
        b: float((block_ids(m, k, unit) == b[0] * -(-k // unit[1]) + b[1]).sum()) for b in means
    }
    order = sorted(means, key=means.get)
    want = s * m * k
    best = min(range(len(order)), key=lambda j: abs(sum(sizes[b] for b in order[:j]) - want))
    assert abs(sum(sizes[b] for b in means if b not in kept) - want) == abs(
        sum(sizes[b] for b in order[:best]) - want
    )


@FAST
@given(st.integers(1, 6), st.integers(2, 12), st.floats(0.0, 0.95))
def test_simd_balanced_keeps_top_vectors_of_each_row_group(groups, gk, s):
    target = get_target("cpu-pocl")  # R = 4, simd_k = 1
    m, k = groups * 4, gk
    imp = torch.rand(m, k)
    mask = get_method("simd-balanced").mask(imp, s, spec(m, k, target))
    for g in range(groups):
        means = brute_block_means(imp[g * 4 : g * 4 + 4], (4, 1))
        kept = kept_blocks(mask[g * 4 : g * 4 + 4], (4, 1))
        assert kept == best_keep_set(means, len(kept))
