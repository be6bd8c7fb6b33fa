"""CIFAR-style VGG16: 13 conv3x3 + BN + ReLU in five stages, then a small classifier.

The classifier follows the CIFAR variant used by Li et al. 2016 (pruning filters): the 512-wide
feature vector goes through Linear(512, 512) + BN + ReLU and Linear(512, classes), instead of the
ImageNet VGG's two 4096-wide layers. Pools use ``ceil_mode`` and the features end in a global
average pool, so 28x28 inputs (Fashion-MNIST) work as well as 32x32 (CIFAR-10).
"""

from __future__ import annotations

from torch import Tensor, nn

from gpuprune.models.factory import MODELS, scaled

# Channel plan of VGG16; "M" is a 2x2 max pool.
VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class VGG(nn.Module):
    """VGG with BatchNorm for small images.

    Args:
        plan: channel counts and "M" for pools.
        num_classes: output classes.
        in_channels: input channels.
        width: multiplier on every channel count.
    """

    def __init__(
        self,
        plan: tuple[int | str, ...] = VGG16_PLAN,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            c_out = scaled(int(item), width)
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(x)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@MODELS.register("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """CIFAR-style VGG16 (13 conv layers, 2 linear layers)."""
    return VGG(VGG16_PLAN, num_classes=num_classes, in_channels=in_channels, width=width)
