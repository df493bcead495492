"""The dataset registry: each dataset's settings class and datamodule under its name, so that ``dataset=<name>``
in the config and :func:`create_datamodule` find both. The built-in datasets are registered where their settings
are (:mod:`vvm.settings.datasets`, with the path of their datamodule, imported here); a dataset defined
elsewhere registers its datamodule with :func:`register_dataset`. Registration order is display order."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vvm.settings import DatasetSettings
from vvm.settings.datasets import DATAMODULES, DATASET_SETTINGS

M = TypeVar("M")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    module: type
    settings: type[DatasetSettings]


DATASETS: dict[str, DatasetEntry] = {}


def register_builtin() -> None:
    """Import the datamodule of every dataset :mod:`vvm.settings.datasets` registers (by its path) into
    :data:`DATASETS`, in their order."""
    for name, path in DATAMODULES.items():
        if name not in DATASETS:
            module, _, cls = path.rpartition(".")
            DATASETS[name] = DatasetEntry(
                name, getattr(importlib.import_module(module), cls), DATASET_SETTINGS[name]
            )


def register_dataset(settings: type[DatasetSettings]) -> Callable[[type[M]], type[M]]:
    """Class decorator: register a LightningDataModule defined outside vvm (its ``name`` attribute) with its
    settings class."""

    def deco(cls: type[M]) -> type[M]:
        name = str(cls.name)  # type: ignore[attr-defined]
        known = DATASET_SETTINGS.setdefault(name, settings)  # a dataset defined outside vvm joins the schema
        if known is not settings:
            raise ValueError(f"dataset {name!r}: its settings are {known.__name__}, not {settings.__name__}")
        DATASETS[name] = DatasetEntry(name, cls, settings)
        return cls

    return deco


def dataset_name(settings: DatasetSettings) -> str:
    """The registered name of the dataset ``settings`` configure (``digits``, ``cifar100``, ...)."""
    for name, cls in DATASET_SETTINGS.items():
        if type(settings) is cls:
            return name
    raise TypeError(f"{type(settings).__name__} is not the settings class of a registered dataset")


def create_datamodule(
    settings: DatasetSettings,
    *,
    batch_size: int,
    eval_batch_size: int,
    max_samples: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    pool_size: int | None = None,
) -> Any:
    """The datamodule ``settings`` describe, with the job's training batch size and the CKA pass's batching
    (``eval_batch_size``, ``max_samples``, ``shuffle``, the pooled measures' ``pool_size``) and seed."""
    register_builtin()
    return DATASETS[dataset_name(settings)].module(
        settings,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        max_samples=max_samples,
        cka_shuffle=shuffle,
        seed=seed,
        pool_size=pool_size,
    )


__all__ = [
    "DATASETS",
    "DatasetEntry",
    "create_datamodule",
    "dataset_name",
    "register_builtin",
    "register_dataset",
]
