"""scikit-learn's bundled handwritten digits as 32x32 RGB: real images, no download, the offline default."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vvm.data.augmentation import Augmentation
from vvm.data.base import VisionDataModule
from vvm.data.cifar import UInt8ImageDataset, uint8_transforms

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split is part of the dataset, not of the run: it ignores cfg.seed


def load_digits_uint8(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """All 1,797 digits: 8x8 values 0..16 scaled to [0, 1], bilinearly upsampled to ``image_size``, stored as
    uint8 (x255, rounded) with the gray channel replicated to RGB; labels int64; and the fixed stratified split
    (``{"train": 1437 indices, "test": 360 indices}``, each sorted)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).to(torch.int64)
    idx = np.arange(len(labels))
    train, test = train_test_split(
        idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    return images, labels, {"train": np.sort(train), "test": np.sort(test)}


class DigitsDataModule(VisionDataModule):
    """Handwritten digits (10 classes): 1,437 train / 360 test, 32x32 RGB, normalised with the train split's
    own statistics; training augmentation is a 2-pixel padded random crop (no flips: a flipped 2 is not a 2)."""

    name = "digits"
    num_classes = 10
    image_size = 32
    # mean/std of the train split after the uint8 round trip (/255); tests recompute them
    mean = (0.3054, 0.3054, 0.3054)
    std = (0.3237, 0.3237, 0.3237)
    augmentation = Augmentation(crop_padding=2)  # no flips: a flipped 2 is not a 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._arrays:
            images, labels, splits = load_digits_uint8(self.image_size)
            for s, idx in splits.items():
                i = torch.from_numpy(idx)
                self._arrays[s] = (images[i], labels[i])
        return self._arrays[split]

    def as_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._limit_tensors(*self._load(split))

    def build_split(self, split: str, train_transform: bool) -> Dataset:
        augment = self.augmentation.transforms(self.image_size) if train_transform else []
        return UInt8ImageDataset(*self._load(split), uint8_transforms(self.mean, self.std, augment))
