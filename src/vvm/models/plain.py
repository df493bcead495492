"""``model=plain``: a plain CNN (no shortcuts) of ``depth`` 3x3 conv–BN–ReLU layers, global average pooling and a
linear head, the family Kornblith et al. (2019) train from ten initialisations for their Table 2.

Widths: ``width`` channels for the first third of the layers, ``2 width`` for the second and ``4 width`` for the
last, each third but the first starting with a stride-2 convolution (``floor(3 i / depth)``: for ``depth = 10``, 4 + 3 + 3 layers at 32, 16 and 8 pixels on 32x32 inputs). The
paper's own appendix network differs in its details (widths, where it downsamples); what the identification
experiment needs is the same: architecturally identical networks, every layer a conv–BN–ReLU block.
"""

from __future__ import annotations

from torch import Tensor, nn

LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear)


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()
    )


def stage_of(i: int, depth: int) -> int:
    """The third (0, 1, 2) of the network layer ``i`` belongs to: ``floor(3 i / depth)``."""
    return min(2, 3 * i // depth)


class PlainCNN(nn.Module):
    """``layers.0`` .. ``layers.{depth-1}`` (conv–BN–ReLU), ``avgpool``, ``flatten``, ``fc`` (see the module
    docstring)."""

    def __init__(self, depth: int = 10, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"model=plain needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        layers, in_ch = [], 3
        for i in range(depth):
            s = stage_of(i, depth)
            first = i > 0 and s != stage_of(i - 1, depth)
            layers.append(conv_bn_relu(in_ch, width * 2**s, 2 if first else 1))
            in_ch = width * 2**s
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(self.layers(x))))

    def layer_presets(self) -> dict[str, list[str]]:
        """``blocks``: every conv–BN–ReLU layer's output and the logits (``fc``); ``all``: every conv, BN, ReLU,
        pool and linear output; ``term_project``: the BN, ReLU, pool and ``fc`` outputs."""
        blocks = [f"layers.{i}" for i in range(len(self.layers))] + ["fc"]
        leaves = [n for n, m in self.named_modules() if n and isinstance(m, LEAVES)]
        chosen = [n for n, m in self.named_modules() if n and isinstance(m, LEAVES[1:])]
        return {"blocks": blocks, "all": leaves, "term_project": chosen}


__all__ = ["PlainCNN"]
