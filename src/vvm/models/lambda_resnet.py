"""Lambda-ResNets for 32x32 inputs (Bello, "LambdaNetworks: Modeling Long-Range Interactions Without
Attention", ICLR 2021): the CIFAR ResNet of :mod:`vvm.models.resnet_cifar` (3x3 stride-1 stem, no max-pool,
bottleneck stages of widths 64/128/256/512 with expansion 4) in which every bottleneck's 3x3 convolution is a
lambda layer.

The lambda layer is timm's :class:`timm.layers.lambda_layer.LambdaLayer`: a content lambda (softmax-normalised
keys times values, shared by all queries) plus a local positional lambda computed as a lambda convolution over an
``r x r`` neighbourhood, with ``num_heads`` query heads of size ``dim_head`` (|k|) and intra-depth |u| = 1; a
stride-2 block averages 2x2 after the lambda layer. Defaults follow the paper's ResNet experiments:
|h| = 4 heads, |k| = 16, r = 23 (on a 32x32 CIFAR map a 23x23 scope covers most of the image; on the 4x4 maps of
the last stage it is global).

Block counts: ``lambda_r26`` [2, 2, 2, 2], ``lambda_r38`` [2, 3, 5, 2], ``lambda_r50`` [3, 4, 6, 3].

Module names follow :class:`vvm.models.resnet_cifar.Bottleneck`: ``conv1 bn1 relu1 lambda_layer bn2 relu2 conv3
bn3 shortcut relu3``, so the ``term_project`` preset (names containing bn, relu, avgpool, fc, maxpool) picks the same
kind of layers as in the CIFAR ResNets.
"""

from __future__ import annotations

from torch import Tensor, nn

from vvm.models.base import VisionModel
from vvm.models.resnet_cifar import LEAF_TYPES, CifarResNet, _conv_bn, _shortcut

# the paper's lambda layer hyper-parameters for ResNets: 4 heads, |k| = 16, |u| = 1, 23x23 local scope
NUM_HEADS = 4
DIM_HEAD = 16
LOCAL_CONTEXT = 23

BLOCK_COUNTS = {"lambda_r26": [2, 2, 2, 2], "lambda_r38": [2, 3, 5, 2], "lambda_r50": [3, 4, 6, 3]}
_PARAMS = {"lambda_r26": "8.3M", "lambda_r38": "10.1M", "lambda_r50": "13.1M"}
# what model=<name> is (the registry's description)
DESCRIPTIONS = {
    name: f"Lambda-ResNet-{name[-2:]} for 32x32 inputs (Bello 2021): CIFAR stem, bottleneck stages {blocks} "
    f"whose 3x3 convs are lambda layers (4 heads, |k|=16, 23x23 local positional lambdas), {_PARAMS[name]} "
    "parameters with 100 classes"
    for name, blocks in BLOCK_COUNTS.items()
}


class LambdaBottleneck(nn.Module):
    """Bottleneck (1x1 conv, lambda layer, 1x1 conv, x4 expansion) with the 3x3 conv replaced by a lambda layer.

    The lambda layer maps ``planes`` to ``planes`` channels; with ``stride=2`` it average-pools its output 2x2
    (timm's LambdaLayer), the shortcut is a strided 1x1 conv + BN as in the CIFAR ResNet.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        num_heads: int = NUM_HEADS,
        dim_head: int = DIM_HEAD,
        r: int = LOCAL_CONTEXT,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride}: a lambda layer strides by 2x2 average pooling, use 1 or 2")
        from timm.layers.lambda_layer import LambdaLayer  # imported here: importing timm takes seconds

        out = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, 1, 1)
        self.relu1 = nn.ReLU()
        self.lambda_layer = LambdaLayer(
            planes, planes, stride=stride, num_heads=num_heads, dim_head=dim_head, r=r
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3, self.bn3 = _conv_bn(planes, out, 1, 1)
        self.shortcut = _shortcut(in_planes, out, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.lambda_layer(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class LambdaResNet(CifarResNet):
    """A :class:`CifarResNet` of :class:`LambdaBottleneck` blocks (stem, four stages, pool, linear head)."""

    def __init__(self, num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__(LambdaBottleneck, num_blocks, num_classes)

    def recorded_layers(self) -> list[str]:
        """Every conv, BN, ReLU, lambda layer, pool and linear output: the lambda layers as units (their q/k/v
        projection, norms and positional lambda convolution are internals, and their pool output equals the
        layer's output)."""
        from timm.layers.lambda_layer import LambdaLayer

        lambda_internal = tuple(f"{n}." for n, m in self.named_modules() if isinstance(m, LambdaLayer))
        return [
            n
            for n, m in self.named_modules()
            if n and isinstance(m, (*LEAF_TYPES, LambdaLayer)) and not n.startswith(lambda_internal)
        ]


def build(name: str, num_classes: int = 100) -> VisionModel:
    """The registry's builder: ``name`` is one of ``lambda_r26``, ``lambda_r38``, ``lambda_r50``."""
    if name not in BLOCK_COUNTS:
        raise ValueError(f"unknown Lambda-ResNet {name!r}: choose one of {', '.join(BLOCK_COUNTS)}")
    return VisionModel(LambdaResNet(BLOCK_COUNTS[name], num_classes), name=name)
