"""A tiny CNN for tests and smoke runs: three conv3x3 + BN + ReLU and a linear head."""

from __future__ import annotations

from torch import Tensor, nn

from gpuprune.models.factory import MODELS, scaled


class TinyCNN(nn.Module):
    """Conv(8)-pool-Conv(16)-pool-Conv(32)-global pool-Linear; channels scale by width."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = [scaled(8, width), scaled(16, width), scaled(32, width)]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(c):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if i < len(c) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@MODELS.register("tiny-cnn")
def tiny_cnn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> TinyCNN:
    """Three-conv CNN for tests (about 6k parameters at width 1)."""
    return TinyCNN(num_classes=num_classes, in_channels=in_channels, width=width)
