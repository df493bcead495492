"""Shared LightningDataModule for every dataset: splits, fixed subsets, loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from vvm.data.batches import EvalBatches, permutation, pooled_plan
from vvm.settings import DatasetSettings, check_ranges, plain
from vvm.settings.datasets import DATASET_SETTINGS

SPLITS = ("train", "test")


def fixed_subset(ds: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """The same ``limit`` examples every time: a seeded permutation's first ``limit`` indices, kept in order."""
    if limit is None or limit >= len(ds):
        return ds
    if limit <= 0:
        raise ValueError(f"limit={limit} must be a positive number of examples (or null for all)")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:limit].sort().values.tolist()
    return Subset(ds, idx)


class VisionDataModule(pl.LightningDataModule):
    """Base class: subclasses set ``name``, ``num_classes``, ``image_size``, ``mean``, ``std`` and implement
    :meth:`build_split` (``"train"`` or ``"test"``, eval transforms for test, training augmentation for train).

    Loaders: ``train_dataloader`` (shuffled, augmented, ``batch_size``), ``val_dataloader`` (the ``probe`` subset
    of the test split, for accuracy and CKA during training), ``test_dataloader`` (the CKA pass over ``split``).
    Both evaluation loaders follow :mod:`vvm.data.batches`: a seeded random permutation (``cka_shuffle``),
    ``max_samples`` its first examples, balanced batches of at most ``eval_batch_size``, whole batches per rank;
    with ``pool_size`` (the pooled measures' declared n) pools of that many examples, each cut into those batches.
    """

    name: str = "base"
    num_classes: int = 0  # 0: whatever the settings say; else the dataset's own count, checked
    any_num_classes: bool = False  # True: the settings' num_classes may differ (a subset, say Imagenette)
    image_size: int = 32
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        settings: DatasetSettings | None = None,
        *,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        max_samples: int | None = None,
        cka_shuffle: bool = True,
        seed: int = 0,
        pool_size: int | None = None,
        **options: Any,
    ) -> None:
        """``settings``: the dataset's (``dataset.*``: its class in :data:`vvm.settings.datasets.DATASET_SETTINGS`,
        whose fields become this datamodule's attributes); without them, ``options`` are those settings' keys
        (``DigitsDataModule(limit=50)``), the others their defaults. The rest is the job's: the training
        ``batch_size``, the CKA pass's batching (``eval_batch_size``, ``max_samples``, ``cka_shuffle``, the pooled
        measures' ``pool_size``) and the seed."""
        super().__init__()
        if settings is None:
            settings = DATASET_SETTINGS.get(self.name, DatasetSettings)(**options)
        elif options:
            raise TypeError(f"pass the dataset's settings or its keys, not both: {', '.join(options)}")
        bad = check_ranges(settings, "dataset.")
        if bad:
            raise ValueError("; ".join(bad))
        self.settings = settings
        own = type(self).num_classes
        if own and not self.any_num_classes and settings.num_classes != own:
            raise ValueError(
                f"dataset {self.name!r} has {own} classes, not num_classes={settings.num_classes}"
            )
        for f in fields(settings):
            setattr(self, f.name, plain(getattr(settings, f.name)))
        if self.split not in SPLITS:
            raise ValueError(f"dataset.split={self.split!r}: use one of {', '.join(SPLITS)}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(
                f"similarity.max_samples={max_samples}: use a positive number of examples, or null for all"
            )
        if eval_batch_size < 1:
            raise ValueError(
                f"similarity.batch_size={eval_batch_size}: use a positive number of examples per batch"
            )
        self.pool_size = pool_size  # the pooled measures' declared n (vvm.cka.pools), None without them
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_samples = max_samples
        self.cka_shuffle = bool(cka_shuffle)
        self.seed = seed
        self._cache: dict[tuple[str, bool], Dataset] = {}

    # subclasses implement this
    def build_split(self, split: str, train_transform: bool) -> Dataset:
        raise NotImplementedError

    def as_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split in memory, for pipelines that keep the data on the GPU and augment there.

        Contract: ``(images, labels)``, images ``uint8 [N, 3, H, W]`` before any transform or normalisation
        (divide by 255, then normalise with ``mean``/``std``), labels ``int64 [N]``; the same examples in the
        same order as ``dataset(split)`` (``limit`` applied with :func:`fixed_subset`'s indices, see
        :meth:`_limit_tensors`). Datasets too big for memory (ImageNet) do not implement it.
        """
        raise NotImplementedError(f"dataset {self.name!r} has no in-memory form: use its dataloaders")

    def _limit_tensors(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``limit`` to whole-split tensors with the indices :meth:`dataset` uses."""
        sub = fixed_subset(TensorDataset(images, labels), self.limit, self.seed)
        if isinstance(sub, Subset):
            idx = torch.as_tensor(sub.indices, dtype=torch.long)
            return images[idx], labels[idx]
        return images, labels

    def dataset(self, split: str, *, augment: bool = False) -> Dataset:
        """The split after ``limit``: eval transforms unless ``augment``."""
        key = (split, augment)
        if key not in self._cache:
            self._cache[key] = fixed_subset(self.build_split(split, augment), self.limit, self.seed)
        return self._cache[key]

    def cka_dataset(self) -> Dataset:
        """The split the CKA pass reads (after ``limit``); :meth:`cka_batches` chooses and orders examples."""
        return self.dataset(self.split)

    def probe_dataset(self) -> Dataset:
        ds = self.dataset("test")
        return fixed_subset(ds, self.probe_size, self.seed + 1)

    def _eval_batches(self, ds: Dataset, seed: int, max_samples: int | None, name: str) -> EvalBatches:
        order = permutation(len(ds), seed, self.cka_shuffle)
        if max_samples is not None:
            order = order[:max_samples]
        plan, layout = pooled_plan(order, self.eval_batch_size, self.pool_size)
        label = f"{self.name}/{name}/seed{seed}/shuffle{int(self.cka_shuffle)}"
        return EvalBatches(ds, plan, name=label, layout=layout)

    def cka_batches(self) -> EvalBatches:
        """The CKA pass: a seeded random permutation of the split, its first ``max_samples``, balanced batches."""
        return self._eval_batches(self.cka_dataset(), self.seed, self.max_samples, self.split)

    def probe_batches(self) -> EvalBatches:
        return self._eval_batches(self.probe_dataset(), self.seed + 1, None, "probe")

    def pins_memory(self, device: torch.device | str | None = None) -> bool:
        """Whether the loaders pin their batches (page-locked memory: asynchronous, faster copies to a GPU).
        ``pin_memory="auto"`` (the default): when they feed a CUDA device, ``device`` or else the attached
        Trainer's (without either: when CUDA is available)."""
        if isinstance(self.pin_memory, bool):
            return self.pin_memory
        if device is None and self.trainer is not None:
            device = self.trainer.strategy.root_device
        if device is None:
            return torch.cuda.is_available()
        return torch.device(device).type == "cuda"

    def eval_loader(self, batches: EvalBatches, *, device: torch.device | str | None = None) -> DataLoader:
        """The loader of an evaluation pass over ``batches`` (the CKA pass, the probe, ``vvm.joint``): this
        datamodule's workers, memory pinned for a CUDA ``device`` (see :meth:`pins_memory`). ``batches`` was made
        in the main process, so it carries this rank's shard into the workers (whatever their start method)."""
        workers = min(self.num_workers, max(len(batches.plan), 1))
        return DataLoader(
            batches,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pins_memory(device),
            persistent_workers=workers > 0,
        )

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pins_memory(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            self.dataset("train", augment=True), self.batch_size, shuffle=True, drop_last=False
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.probe_batches())

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.cka_batches())
