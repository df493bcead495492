"""A training set kept on the device, augmented there in batched tensor ops.

The term project fed its GPU from a CPU ``DataLoader`` that transformed one image at a time (pad, crop, flip, to float,
normalise). For CIFAR-sized data that loader, not the network, sets the pace on a fast GPU. Here the whole
split lives on the device as ``uint8 [N, 3, H, W]`` (CIFAR: 150 MB) and every batch is built there:

1. a permutation of the indices, the same on every rank (seeded by ``seed`` and the epoch), of which rank ``r``
   takes every ``world_size``-th index, padded by wrapping around as ``DistributedSampler`` does;
2. random crop after zero padding (two ``gather`` calls with a per-image offset) and horizontal flip (a
   ``where`` between the batch and its mirror), on the uint8 batch;
3. ``/255`` and normalisation with the dataset's ``mean``/``std`` (what ``ToDtype(scale=True)`` +
   ``Normalize`` compute), optionally in channels_last memory format.

The same code runs on the CPU (the tests exercise it there); :class:`DeviceResidentDataModule` wraps any
datamodule that implements ``as_tensors`` and hands Lightning this loader for training, and the wrapped
datamodule's own loaders for validation and test.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from vvm.data.augmentation import Augmentation

log = logging.getLogger(__name__)


def augmentation_for(datamodule: Any) -> Augmentation:
    """The datamodule's own ``augmentation`` (every vvm datamodule declares one); none, with a warning, for a
    datamodule that does not."""
    own = getattr(datamodule, "augmentation", None)
    if isinstance(own, Augmentation):
        return own
    name = getattr(datamodule, "name", None)
    warnings.warn(
        f"no augmentation is declared for dataset {name!r}: training on it without augmentation (give its "
        "datamodule an `augmentation`, or use train.speed.gpu_resident=false for its own per-image transforms)",
        stacklevel=2,
    )
    return Augmentation()


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Pad ``x`` ``[B, C, H, W]`` with ``padding`` zeros on every side and cut a random ``H x W`` window from
    each image (one offset per image, uniform over the ``(2p+1)²`` positions)."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, b), device=x.device, generator=generator)
    rows = off[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = off[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
    x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image of ``x`` ``[B, C, H, W]`` left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: Tensor, aug: Augmentation, generator: torch.Generator | None = None) -> Tensor:
    x = random_crop(x, aug.crop_padding, generator)
    if aug.flip:
        x = random_flip(x, generator)
    return x


def normalise(x: Tensor, mean: Tensor, std: Tensor, *, channels_last: bool = False) -> Tensor:
    """uint8 ``x`` -> ``(x / 255 - mean) / std`` in float32 (``mean``/``std`` shaped ``[1, C, 1, 1]``)."""
    out = (x.float().div_(255) - mean).div_(std)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def shard_indices(n: int, *, rank: int = 0, world_size: int = 1, perm: Tensor | None = None) -> Tensor:
    """Rank ``rank``'s share of ``perm`` (default ``arange(n)``): every ``world_size``-th index from ``rank``,
    after padding to a multiple of ``world_size`` by wrapping around (``DistributedSampler``'s rule)."""
    idx = torch.arange(n) if perm is None else perm
    total = math.ceil(n / world_size) * world_size
    if total > n:
        reps = math.ceil((total - n) / n)
        idx = torch.cat([idx, idx.repeat(reps)[: total - n]])
    return idx[rank:total:world_size]


class DeviceBatches:
    """An iterable of ``(images, labels)`` batches built on the device from resident uint8 tensors.

    ``images`` ``uint8 [N, C, H, W]`` and ``labels`` ``int64 [N]`` stay where they are (move them to the GPU
    first); each pass shuffles (``shuffle``), takes this rank's share, augments and normalises. ``epoch_fn``
    gives the epoch that seeds the shuffle and the augmentation (so a resumed training sees the same batches
    as an uninterrupted one); without it, passes are counted.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augmentation: Augmentation = Augmentation(),
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 [N, C, H, W] images and N labels, got {images.dtype} {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        c = images.shape[1]
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32, device=images.device).view(1, c, 1, 1)
        self.std = torch.as_tensor(list(std), dtype=torch.float32, device=images.device).view(1, c, 1, 1)
        self.augmentation = augmentation
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.channels_last = channels_last
        self.epoch_fn = epoch_fn
        self._passes = 0

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def per_rank(self) -> int:
        return math.ceil(len(self.labels) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self, epoch: int) -> Tensor:
        """This rank's indices for ``epoch``, in batch order (on the CPU)."""
        n = len(self.labels)
        perm = None
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return shard_indices(n, rank=self.rank, world_size=self.world_size, perm=perm)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._passes
        self._passes += 1
        idx = self.indices(epoch).to(self.device, non_blocking=True)
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.seed * 100_003 + epoch) * 1_009 + self.rank)
        for i in range(len(self)):
            sel = idx[i * self.batch_size : (i + 1) * self.batch_size]
            x = augment(self.images[sel], self.augmentation, gen)
            yield normalise(x, self.mean, self.std, channels_last=self.channels_last), self.labels[sel]


def images_fit(images: Tensor, device: torch.device, fraction: float = 0.25) -> bool:
    """Whether ``images`` take at most ``fraction`` of the free memory of ``device`` (always true off CUDA)."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= fraction * free


class DeviceResidentDataModule(pl.LightningDataModule):
    """``datamodule`` with its training split on the device: :class:`DeviceBatches` for ``train_dataloader``
    (this rank's share under DDP), the wrapped datamodule's loaders for validation (the CKA probe) and test."""

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        *,
        batch_size: int,
        seed: int = 0,
        channels_last: bool = False,
        augmentation: Augmentation | None = None,
    ) -> None:
        super().__init__()
        self.base = datamodule
        self.batch_size = batch_size
        self.seed = seed
        self.channels_last = channels_last
        self.augmentation = augmentation if augmentation is not None else augmentation_for(datamodule)
        self._train: DeviceBatches | None = None

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def setup(self, stage: str) -> None:
        self.base.trainer = self.trainer
        self.base.setup(stage)

    def train_dataloader(self) -> DeviceBatches:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        images, labels = self.base.as_tensors("train")
        self._train = DeviceBatches(
            images.to(device),
            labels.to(device),
            batch_size=self.batch_size,
            mean=self.base.mean,
            std=self.base.std,
            augmentation=self.augmentation,
            shuffle=True,
            seed=self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            channels_last=self.channels_last,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
        )
        log.info(
            "training split on %s: %d images %s, %d batches of %d per rank, augmentation %s",
            device,
            len(labels),
            tuple(images.shape[1:]),
            len(self._train),
            self.batch_size,
            self.augmentation,
        )
        return self._train

    def val_dataloader(self):
        return self.base.val_dataloader()

    def test_dataloader(self):
        return self.base.test_dataloader()

    def teardown(self, stage: str) -> None:
        self._train = None  # frees the device copy
        self.base.teardown(stage)


__all__ = [
    "Augmentation",
    "DeviceBatches",
    "DeviceResidentDataModule",
    "augment",
    "augmentation_for",
    "images_fit",
    "normalise",
    "random_crop",
    "random_flip",
    "shard_indices",
]
