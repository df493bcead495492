"""Each built-in dataset's settings (``dataset.*``), by the dataset's name, and where its datamodule is: the one
place a dataset's keys and defaults are written (its datamodule takes these settings and reads its options as
attributes: ``DigitsDataModule(settings)``), what the schema registers and the config is composed against,
without importing the datamodules (and Lightning) behind them, so that ``python -m vvm --help`` answers at once.

A dataset is registered here, once: ``@dataset_settings("<name>", "vvm.data.<module>.<Class>")`` on its
settings class; :mod:`vvm.data` imports the datamodule from that path. A dataset defined outside vvm joins
:data:`DATASET_SETTINGS` when it registers its datamodule (:func:`vvm.data.register_dataset`)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vvm.settings.base import not_recipe, number
from vvm.settings.data import DatasetSettings

S = TypeVar("S", bound=type)

# the datasets' names -> their settings classes, in display order
DATASET_SETTINGS: dict[str, type[DatasetSettings]] = {}
# the built-in datasets' names -> their datamodules, as ``module.Class`` (imported by vvm.data)
DATAMODULES: dict[str, str] = {}


def dataset_settings(name: str, datamodule: str | None = None) -> Callable[[S], S]:
    """Class decorator: the settings of ``dataset=<name>``, whose datamodule is the class ``datamodule``
    (``vvm.data.digits.DigitsDataModule``; None: one that registers itself, :func:`vvm.data.register_dataset`)."""

    def deco(cls: S) -> S:
        DATASET_SETTINGS[name] = cls
        if datamodule is not None:
            DATAMODULES[name] = datamodule
        return cls

    return deco


@dataset_settings("cifar100", "vvm.data.cifar.CIFAR100DataModule")
@dataclass
class CIFAR100Settings(DatasetSettings):
    """``dataset=cifar100``: the term project's dataset, downloaded into ``root`` when missing."""

    num_classes: int = 100
    download: bool = not_recipe(True)


@dataset_settings("cifar10", "vvm.data.cifar.CIFAR10DataModule")
@dataclass
class CIFAR10Settings(CIFAR100Settings):
    """``dataset=cifar10``."""

    num_classes: int = 10


@dataset_settings("imagenet", "vvm.data.imagenet.ImageNetDataModule")
@dataclass
class ImageNetSettings(DatasetSettings):
    """``dataset=imagenet``: ``root`` the validation ImageFolder, ``train_root`` the training one (default: the
    ``train`` folder next to ``root``); ``num_classes`` may name a subset (Imagenette: 10)."""

    num_classes: int = 1000
    root: str = not_recipe("data/imagenet/val")
    train_root: str | None = not_recipe(None)


@dataset_settings("digits", "vvm.data.digits.DigitsDataModule")
@dataclass
class DigitsSettings(DatasetSettings):
    """``dataset=digits``: scikit-learn's bundled digits (no files, no download)."""

    num_classes: int = 10


@dataset_settings("synthetic", "vvm.data.synthetic.SyntheticDataModule")
@dataclass
class SyntheticSettings(DatasetSettings):
    """``dataset=synthetic``: deterministic generated images with learnable labels (no files)."""

    image_size: int = number(32, minimum=8)
    train_size: int = number(2048, minimum=1)
    test_size: int = number(512, minimum=1)


__all__ = [
    "DATAMODULES",
    "DATASET_SETTINGS",
    "dataset_settings",
    "CIFAR100Settings",
    "CIFAR10Settings",
    "ImageNetSettings",
    "DigitsSettings",
    "SyntheticSettings",
]
