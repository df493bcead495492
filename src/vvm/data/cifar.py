"""CIFAR-10 and CIFAR-100 in torchvision's on-disk layout (``cifar-10-batches-py/``, ``cifar-100-python/``).

We read the pickled batches ourselves instead of constructing ``torchvision.datasets.CIFAR10``: torchvision
re-hashes every file against the official md5s on each construction, which rules out test fixtures, and its
``data`` is HWC numpy while we want the CHW uint8 tensor that :meth:`as_tensors` hands to GPU pipelines. The
download is still torchvision's (same url, archive md5 checked), so the files on disk are the same.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.transforms import v2

from vvm.data.augmentation import Augmentation
from vvm.data.base import VisionDataModule

OFFLINE_HINT = "use dataset=digits to run offline"  # the way out every dataset on disk offers


class UInt8ImageDataset(Dataset):
    """``(transform(images[i]), labels[i])`` over an in-memory ``uint8 [N, C, H, W]`` tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 [N, C, H, W] images and N labels, got {images.dtype} "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


def uint8_transforms(
    mean: Sequence[float], std: Sequence[float], augment: Sequence[Callable] = ()
) -> v2.Compose:
    """``augment`` on the uint8 tensor, then /255 (as ``ToTensor``) and ``Normalize(mean, std)``."""
    return v2.Compose([*augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def _unpickle(path: str) -> dict:
    # The official files are Python 2 pickles: latin1 (as torchvision) turns their str keys into str and lets
    # numpy rebuild the arrays; keys that still come back as bytes are decoded.
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:
        raise RuntimeError(
            f"cannot read {path} ({type(e).__name__}: {e}): the file is truncated or not a "
            f"CIFAR batch; delete its folder and rerun with dataset.download=true"
        ) from e
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


class CIFARDataModule(VisionDataModule):
    """Shared CIFAR logic; subclasses pick the torchvision class that names the files, url and md5."""

    source: type[CIFAR10] = CIFAR10
    label_key: str = "labels"
    meta_key: str = "label_names"
    image_size = 32
    augmentation = Augmentation(crop_padding=4, flip=True)  # the term project's: flip + 4-pixel padded crop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def folder(self) -> str:
        return os.path.join(self.root, self.source.base_folder)

    def _files(self, split: str) -> list[str]:
        names = self.source.train_list if split == "train" else self.source.test_list
        return [os.path.join(self.folder, name) for name, _md5 in names]

    def _missing(self, splits: Sequence[str] = ("train", "test")) -> list[str]:
        return [p for s in splits for p in self._files(s) if not os.path.isfile(p)]

    def ensure_files(self, splits: Sequence[str] = ("train", "test")) -> None:
        """Download and extract the archive into ``root`` when files are missing and ``download`` allows it;
        otherwise raise an error naming the folder, what was tried, and the offline way out."""
        missing = self._missing(splits)
        if not missing:
            return
        where = f"dataset {self.name!r} is not in {self.folder} (missing {os.path.basename(missing[0])})"
        if not self.download:
            raise FileNotFoundError(
                f"{where} and dataset.download=false. Extract {self.source.filename} under "
                f"{self.root} (paths.data / $VVM_DATA), set dataset.download=true, or {OFFLINE_HINT}"
            )
        try:
            download_and_extract_archive(
                self.source.url, self.root, filename=self.source.filename, md5=self.source.tgz_md5
            )
        except Exception as e:
            raise FileNotFoundError(
                f"{where} and the download from {self.source.url} failed: {type(e).__name__}: "
                f"{e}. Put the extracted {self.source.base_folder}/ under {self.root} "
                f"(paths.data / $VVM_DATA), or {OFFLINE_HINT}"
            ) from e
        missing = self._missing(splits)
        if missing:
            raise FileNotFoundError(
                f"{where}: the archive from {self.source.url} was extracted into {self.root} "
                f"but {missing[0]} is still missing; {OFFLINE_HINT}"
            )

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup: the only place that downloads under DDP.
        self.ensure_files()

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: uint8 ``[N, 3, 32, 32]`` (the files store CHW rows of 3072 bytes), int64 labels."""
        if split not in self._arrays:
            self.ensure_files((split,))
            data, labels = [], []
            for path in self._files(split):
                entry = _unpickle(path)
                try:
                    data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                    labels.extend(entry[self.label_key])
                except (KeyError, ValueError) as e:
                    raise RuntimeError(
                        f"{path} is not a {self.name} batch ({type(e).__name__}: {e}): expected "
                        f"'data' [N, 3072] uint8 and '{self.label_key}'"
                    ) from e
            images = torch.from_numpy(np.concatenate(data))
            targets = torch.tensor(labels, dtype=torch.int64)
            if len(images) != len(targets):
                raise RuntimeError(
                    f"{self.folder}: {len(images)} images but {len(targets)} labels in {split}"
                )
            if len(targets) and (targets.min() < 0 or targets.max() >= self.num_classes):
                raise RuntimeError(f"{self.folder}: labels outside 0..{self.num_classes - 1} in {split}")
            self._arrays[split] = (images, targets)
        return self._arrays[split]

    @property
    def classes(self) -> list[str]:
        """Class names, from the meta file."""
        return list(_unpickle(os.path.join(self.folder, self.source.meta["filename"]))[self.meta_key])

    def as_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._limit_tensors(*self._load(split))

    def build_split(self, split: str, train_transform: bool) -> Dataset:
        augment = self.augmentation.transforms(self.image_size) if train_transform else []
        return UInt8ImageDataset(*self._load(split), uint8_transforms(self.mean, self.std, augment))


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 (fine labels), with the term project's normalisation and augmentation (flip + 4-pixel padded crop)."""

    name = "cifar100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    source = CIFAR100
    label_key = "fine_labels"
    meta_key = "fine_label_names"


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10, with the usual normalisation and the same augmentation as CIFAR-100."""

    name = "cifar10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    source = CIFAR10
    label_key = "labels"
    meta_key = "label_names"
