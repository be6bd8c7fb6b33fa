"""ResNets (He et al. 2016): the CIFAR ResNet-20 and the ImageNet-shaped bottleneck ResNet-50.

CIFAR ResNet (section 4.2): 3 stages of basic blocks, 16/32/64 channels; ResNet-20 has 3 blocks
per stage. ResNet-50 has torchvision's layer shapes (stride on the 3x3 conv, "v1.5"), built here
so it needs no torchvision. Shortcuts that change shape use a 1x1 conv + BN (option B), so
every layer is a Conv2d or Linear that the pruner and the compiled backends understand.
"""

from __future__ import annotations

from torch import Tensor, nn

from gpuprune.models.factory import MODELS, scaled


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """A residual block's skip path: identity, or a strided 1x1 conv + BN where shapes change."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(c_out))  # fmt: skip


class BasicBlock(nn.Module):
    """Two conv3x3 + BN with a residual connection."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # in place, as torchvision: no new activation-sized tensor
        return self.relu(out)


class _ResNet(nn.Module):
    """What every ResNet here shares after its stem: the stages, global pooling, the classifier,
    He initialisation of the convolutions, and the forward pass."""

    stem: nn.Module

    def _head(self, stages: list[nn.Module], c_in: int, num_classes: int) -> None:
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


class CifarResNet(_ResNet):
    """ResNet for 32x32 inputs with ``blocks`` basic blocks per stage (depth = 6 * blocks + 2)."""

    def __init__(
        self, blocks: int = 3, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        c = [scaled(16, width), scaled(32, width), scaled(64, width)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(c[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c_in = c[0]
        for i, c_out in enumerate(c):
            for j in range(blocks):
                stages.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self._head(stages, c_in, num_classes)


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (19 conv layers + 1 linear, residual connections)."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, width=width)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand (4x), each with BN, plus the shortcut."""

    expansion = 4

    def __init__(self, c_in: int, mid: int, stride: int) -> None:
        super().__init__()
        c_out = mid * self.expansion
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return self.relu(out)


class ResNet50(_ResNet):
    """ResNet-50 for 224x224 inputs: a 7x7 stem, 3/4/6/3 bottleneck blocks, 2048 features."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c0 = scaled(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        c_in = c0
        for i, (mid, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
            for j in range(blocks):
                block = Bottleneck(c_in, scaled(mid, width), 2 if (i > 0 and j == 0) else 1)
                stages.append(block)
                c_in = scaled(mid, width) * Bottleneck.expansion
        self._head(stages, c_in, num_classes)


@MODELS.register("resnet50")
def resnet50(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet50:
    """ResNet-50 (torchvision's layer shapes, 53 conv layers + 1 linear), for 224x224 inputs."""
    return ResNet50(num_classes=num_classes, in_channels=in_channels, width=width)
