"""LightningDataModules: cifar100, cifar10, imagenet, digits, synthetic (and any dataset registered in
:mod:`vvm.settings.datasets`)."""

from vvm.data.base import VisionDataModule, fixed_subset
from vvm.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule, UInt8ImageDataset
from vvm.data.digits import DigitsDataModule
from vvm.data.imagenet import ImageNetDataModule
from vvm.data.registry import DATASETS, create_datamodule, dataset_name, register_builtin, register_dataset
from vvm.data.synthetic import SyntheticDataModule

register_builtin()  # every dataset of vvm.settings.datasets, with its datamodule

__all__ = [
    "DATASETS",
    "create_datamodule",
    "dataset_name",
    "register_dataset",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
    "UInt8ImageDataset",
    "VisionDataModule",
    "fixed_subset",
]
