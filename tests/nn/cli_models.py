"""Models the CLI tests build through ``--model cli_models:NAME`` (a user factory)."""

from __future__ import annotations

import torch
from torch import nn


class AttentionDecoder(nn.Module):
    """Patches, one attention block, a stride-1 and a stride-2 transposed conv, a head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.same = nn.ConvTranspose2d(dim, dim, 3, padding=1)
        self.up = nn.ConvTranspose2d(dim, 16, 2, stride=2)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch(x)
        b, c, h, w = p.shape
        t = self.norm(p.flatten(2).transpose(1, 2))
        t = t + self.attn(t, t, t, need_weights=False)[0]
        y = torch.relu(self.same(t.transpose(1, 2).reshape(b, c, h, w)))
        return self.head(torch.relu(self.up(y)).mean(dim=(2, 3)))


def attention_decoder(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return AttentionDecoder(num_classes, in_channels)
