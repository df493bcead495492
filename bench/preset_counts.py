"""The layer counts of vvm's presets for the models whose layers come from timm, against those measured with
timm 1.0.31 (the version CI pins): the GPU session's first step, so that a different timm on the device, whose
models name or nest their modules differently, is caught before any number is compared across machines.

    python bench/preset_counts.py      # prints one line per model; exit 1 when a count differs

Models are built on PyTorch's meta device (no memory, no initialisation: ViT-L/32 in seconds).
"""

from __future__ import annotations

import sys

import timm
import torch

from vvm.cka import resolve_layers
from vvm.models import create

# (blocks, all) with timm 1.0.31, torch 2.14.1
EXPECTED = {
    "r18": (10, 59),
    "r34": (18, 107),
    "r50": (18, 157),
    "lambda_r26": (10, 85),
    "vit_l32": (27, 219),
}


def counts(name: str) -> tuple[int, int]:
    with torch.device("meta"):
        model = create(name, num_classes=100)
    return tuple(len(resolve_layers(model.net, preset)) for preset in ("blocks", "all"))  # type: ignore[return-value]


def main() -> int:
    print(f"timm {timm.__version__}, torch {torch.__version__}: layers per preset (blocks / all)")
    bad = []
    for name, expected in EXPECTED.items():
        got = counts(name)
        ok = got == expected
        bad += [] if ok else [name]
        print(
            f"  {name:11s} blocks {got[0]:3d}  all {got[1]:3d}"
            + ("" if ok else f"  MISMATCH: expected {expected}")
        )
    if bad:
        print(
            f"layer counts differ for {', '.join(bad)}: this timm builds them differently; compare no numbers"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
