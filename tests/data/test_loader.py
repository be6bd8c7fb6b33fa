"""Batch loader: crop/flip against per-image references, sharding, determinism, normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpuprune.data import BatchLoader, eval_loader, make_synthetic, train_loader
from gpuprune.data.loader import random_crop, random_flip


def test_random_crop_matches_per_image_slices() -> None:
    x = torch.randint(0, 256, (37, 3, 9, 7), dtype=torch.uint8)
    pad = 3
    out = random_crop(x, pad, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 2 * pad + 1, (37,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (37,), generator=gen)
    padded = F.pad(x, (pad,) * 4)
    for i in range(37):
        ref = padded[i, :, dy[i] : dy[i] + 9, dx[i] : dx[i] + 7]
        assert torch.equal(out[i], ref)
    assert len({(int(a), int(b)) for a, b in zip(dy, dx, strict=True)}) > 5  # offsets vary


def test_random_flip_mirrors_some_images_exactly() -> None:
    x = torch.randn(64, 2, 5, 5)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, xi.flip(2))) for o, xi in zip(out, x, strict=True)]
    same = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 10 < sum(flipped) < 54


def test_eval_shards_cover_every_image_once() -> None:
    data = make_synthetic(train=64, test=103, size=8)
    seen = []
    for rank in range(3):
        for _, y in eval_loader(data, 10, rank=rank, world_size=3):
            seen.append(y)
    assert len(torch.cat(seen)) == 103
    one = torch.cat([y for _, y in eval_loader(data, 10)])
    assert sorted(torch.cat(seen).tolist()) == sorted(one.tolist())


def test_train_shards_are_disjoint_equal_and_seeded_by_epoch() -> None:
    data = make_synthetic(train=100, test=10, size=8)
    data = data.__class__(**{**data.__dict__, "train_y": torch.arange(100)})  # labels = index
    loaders = [train_loader(data, 10, seed=3, rank=r, world_size=2) for r in range(2)]
    shards = [torch.cat([y for _, y in ld]) for ld in loaders]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    again = torch.cat([y for _, y in train_loader(data, 10, seed=3, rank=0, world_size=2)])
    assert torch.equal(again, shards[0])
    loaders[0].set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loaders[0]]), shards[0])


def test_batches_are_normalised_floats() -> None:
    data = make_synthetic(train=256, test=16, size=8, channels=2)
    loader = BatchLoader(data.train_x, data.train_y, data.mean, data.std, batch_size=256)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(2), atol=1e-3)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(2), atol=1e-2)


def test_drop_last_and_lengths() -> None:
    data = make_synthetic(train=95, test=95, size=8)
    assert len(train_loader(data, 10)) == 9 == sum(1 for _ in train_loader(data, 10))
    assert len(eval_loader(data, 10)) == 10 == sum(1 for _ in eval_loader(data, 10))
