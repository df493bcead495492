"""Synthetic images with learnable labels: no files, no download, bit-identical on every machine."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, TensorDataset

from vvm.data.augmentation import Augmentation
from vvm.data.base import VisionDataModule


def make_synthetic(n: int, num_classes: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a smooth colour pattern (a few random sinusoids); an image is its class pattern, randomly
    shifted, times a random contrast, plus noise. Returns images in [0, 1] ``[n, 3, s, s]`` and labels."""
    g = torch.Generator().manual_seed(seed)
    s = image_size
    yy, xx = torch.meshgrid(
        torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij"
    )
    freqs = torch.rand(num_classes, 3, 2, 2, generator=torch.Generator().manual_seed(1234)) * 3 + 0.5
    phases = torch.rand(num_classes, 3, 2, generator=torch.Generator().manual_seed(4321)) * 2 * math.pi
    labels = torch.randint(0, num_classes, (n,), generator=g)
    shift = torch.randint(-3, 4, (n, 2), generator=g).float()
    contrast = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    f = freqs[labels]  # [n, 3, 2 waves, 2 axes]
    ph = phases[labels]
    yy_s = yy[None, None] + shift[:, 0, None, None, None]
    xx_s = xx[None, None] + shift[:, 1, None, None, None]
    img = torch.zeros(n, 3, s, s)
    for w in range(2):
        arg = 2 * math.pi * (f[:, :, w, 0, None, None] * xx_s + f[:, :, w, 1, None, None] * yy_s) / s
        img += torch.sin(arg + ph[:, :, w, None, None])
    img = 0.5 + 0.25 * contrast * img + 0.05 * torch.randn(n, 3, s, s, generator=g)
    return img.clamp(0, 1), labels


class SyntheticDataModule(VisionDataModule):
    """Deterministic generated images: ``train_size``/``test_size`` examples of ``num_classes`` patterns."""

    name = "synthetic"
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    augmentation = Augmentation()  # its training split is not augmented

    def build_split(self, split: str, train_transform: bool) -> Dataset:
        n = self.train_size if split == "train" else self.test_size
        img, labels = make_synthetic(
            n, self.num_classes, self.image_size, seed=self.seed + (0 if split == "train" else 1)
        )
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return TensorDataset((img - mean) / std, labels)

    def as_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split as uint8 (the [0, 1] images x255, rounded: within 1/510 of what ``dataset`` normalises)."""
        n = self.train_size if split == "train" else self.test_size
        img, labels = make_synthetic(
            n, self.num_classes, self.image_size, seed=self.seed + (0 if split == "train" else 1)
        )
        return self._limit_tensors((img * 255).round().to(torch.uint8), labels)
