"""CIFAR ResNets as in the term project (He et al. 2016, CIFAR variant): a 3x3 stride-1 stem and no max-pool, so a
32x32 image reaches layer4 at 4x4. ResNet-18/34 use basic blocks, ResNet-50/101 bottlenecks.

Every activation is its own module (``relu1``, ``relu2``...), so that each one is a layer CKA can record.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    conv, bn = _conv_bn(in_ch, out_ch, 1, stride)
    return nn.Sequential(conv, bn)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, 1)
        self.shortcut = _shortcut(in_planes, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, 1, 1)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.relu2 = nn.ReLU()
        self.conv3, self.bn3 = _conv_bn(planes, out, 1, 1)
        self.shortcut = _shortcut(in_planes, out, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


LEAF_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear)
TERM_PROJECT_KEYS = ("bn", "relu", "avgpool", "fc", "maxpool")  # the term project notebooks' layer selection


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: stem (3x3 conv, BN, ReLU), four stages, global average pool, linear head."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(64))
        self.stem.add_module("relu", nn.ReLU())
        in_planes = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)), start=1):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def block_names(self) -> list[str]:
        return [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(self, f"layer{i}")))]

    def recorded_layers(self) -> list[str]:
        """What the ``all`` preset records: every conv, BN, ReLU, pool and linear output."""
        return [n for n, m in self.named_modules() if n and isinstance(m, LEAF_TYPES)]

    def layer_presets(self) -> dict[str, list[str]]:
        """``blocks``: stem, every residual block, head. ``all``: :meth:`recorded_layers`. ``term_project``: the
        term project notebooks' choice among those, names containing bn, relu, avgpool, fc or maxpool."""
        names = {n for n, _ in self.named_modules() if n}
        leaves = self.recorded_layers()
        chosen = [n for n in leaves if any(k in n.rsplit(".", 1)[-1] for k in TERM_PROJECT_KEYS)]
        blocks = ["stem", *self.block_names(), "fc"]
        assert all(b in names for b in blocks)
        return {"blocks": blocks, "all": leaves, "term_project": chosen}


def resnet18(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes)


def resnet50(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def resnet101(num_classes: int = 100) -> CifarResNet:
    """The term project's fifth CIFAR ResNet (``R101_CIFAR100.ipynb``): bottlenecks [3, 4, 23, 3]."""
    return CifarResNet(Bottleneck, [3, 4, 23, 3], num_classes)
