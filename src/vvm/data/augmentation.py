"""A dataset's training augmentation, declared once (``augmentation`` on each datamodule) and built two ways:
per image with torchvision (:meth:`Augmentation.transforms`) and per batch on the device
(:mod:`vvm.train.gpu_data`)."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.transforms import v2


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: ``crop_padding`` pixels of zero padding then a random crop back to the original
    size (torchvision's ``RandomCrop(size, padding=p)``), and ``flip``: a horizontal flip with probability 1/2
    (``RandomHorizontalFlip``)."""

    crop_padding: int = 0
    flip: bool = False

    def transforms(self, size: int) -> list[v2.Transform]:
        """The per-image torchvision transforms, for ``size x size`` images (uint8 tensors or images)."""
        out: list[v2.Transform] = []
        if self.crop_padding > 0:
            out.append(v2.RandomCrop(size, padding=self.crop_padding))
        if self.flip:
            out.append(v2.RandomHorizontalFlip())
        return out


__all__ = ["Augmentation"]
