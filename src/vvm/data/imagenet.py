"""ImageNet (ILSVRC-2012) from ImageFolder trees on disk: ``root`` is the validation set in class folders."""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from vvm.data.base import VisionDataModule
from vvm.data.cifar import OFFLINE_HINT


class ImageNetDataModule(VisionDataModule):
    """The validation set at ``root`` (``<class folder>/<image>``, e.g. after the usual ``valprep.sh``):
    Resize 256, CenterCrop 224, ImageNet normalisation. The train split is an ImageFolder at ``train_root``
    (default: the ``train`` folder next to ``root``) with RandomResizedCrop 224 + horizontal flip.

    ``num_classes`` (default 1000) must equal the number of class folders; a smaller value lets a subset of
    ImageNet (say Imagenette) stand in.
    """

    name = "imagenet"
    num_classes = 1000
    image_size = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    any_num_classes = True  # a subset of ImageNet (Imagenette: 10) may stand in, checked against the folders

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_root = self.train_root or os.path.join(
            os.path.dirname(os.path.normpath(self.root)), "train"
        )

    def transform(self, train: bool) -> T.Compose:
        if train:
            head = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()]
        else:
            head = [T.Resize(256), T.CenterCrop(self.image_size)]
        return T.Compose([*head, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def build_split(self, split: str, train_transform: bool) -> Dataset:
        if split == "train":
            path = self.train_root
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"dataset 'imagenet': no train split at {path} (the folder next to "
                    f"root={self.root}); set dataset.train_root=..., use dataset.split=test "
                    f"with a pretrained init, or {OFFLINE_HINT}"
                )
        else:
            path = self.root
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"dataset 'imagenet' is not at {path}: point dataset.root=... (or "
                    f"paths.data / $VVM_DATA) at the validation set in class folders, "
                    f"or {OFFLINE_HINT}"
                )
        try:
            ds = ImageFolder(path, transform=self.transform(train_transform))
        except (FileNotFoundError, RuntimeError) as e:
            raise FileNotFoundError(
                f"dataset 'imagenet': {path} is not an ImageFolder ({e}); it needs one "
                f"folder of images per class; {OFFLINE_HINT}"
            ) from e
        if len(ds.classes) != self.num_classes:
            raise ValueError(
                f"dataset 'imagenet': {path} has {len(ds.classes)} class folders but "
                f"dataset.num_classes={self.num_classes}; set dataset.num_classes={len(ds.classes)} "
                f"or point dataset.root at the full validation set"
            )
        return ds
