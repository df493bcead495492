"""Each built-in dataset's settings (``dataset.*``), by the dataset's name: what the schema registers and the
config is composed against, without importing the datamodules (and Lightning) behind them, so that
``python -m vvm --help`` answers at once. The datamodule of each (:mod:`vvm.data`) registers itself with its
class (``@register_dataset(DigitsSettings)``); a dataset defined elsewhere joins :data:`DATASET_SETTINGS` when
it registers."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vvm.settings.base import not_recipe, number
from vvm.settings.data import DatasetSettings

S = TypeVar("S", bound=type)

# the datasets' names -> their settings classes, in display order
DATASET_SETTINGS: dict[str, type[DatasetSettings]] = {}


def dataset_settings(name: str) -> Callable[[S], S]:
    """Class decorator: the settings of ``dataset=<name>``."""

    def deco(cls: S) -> S:
        DATASET_SETTINGS[name] = cls
        return cls

    return deco


@dataset_settings("cifar100")
@dataclass
class CIFAR100Settings(DatasetSettings):
    """``dataset=cifar100``: the term project's dataset, downloaded into ``root`` when missing."""

    num_classes: int = 100
    download: bool = not_recipe(True)


@dataset_settings("cifar10")
@dataclass
class CIFAR10Settings(CIFAR100Settings):
    """``dataset=cifar10``."""

    num_classes: int = 10


@dataset_settings("imagenet")
@dataclass
class ImageNetSettings(DatasetSettings):
    """``dataset=imagenet``: ``root`` the validation ImageFolder, ``train_root`` the training one (default: the
    ``train`` folder next to ``root``); ``num_classes`` may name a subset (Imagenette: 10)."""

    num_classes: int = 1000
    train_root: str | None = not_recipe(None)


@dataset_settings("digits")
@dataclass
class DigitsSettings(DatasetSettings):
    """``dataset=digits``: scikit-learn's bundled digits (no files, no download)."""

    num_classes: int = 10


@dataset_settings("synthetic")
@dataclass
class SyntheticSettings(DatasetSettings):
    """``dataset=synthetic``: deterministic generated images with learnable labels (no files)."""

    image_size: int = number(32, minimum=8)
    train_size: int = number(2048, minimum=1)
    test_size: int = number(512, minimum=1)


__all__ = [
    "DATASET_SETTINGS",
    "dataset_settings",
    "CIFAR100Settings",
    "CIFAR10Settings",
    "ImageNetSettings",
    "DigitsSettings",
    "SyntheticSettings",
]
