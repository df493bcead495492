"""LightningDataModules: cifar100, cifar10, imagenet, digits, synthetic."""

from vvm.data.base import VisionDataModule, fixed_subset
from vvm.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule, UInt8ImageDataset
from vvm.data.digits import DigitsDataModule
from vvm.data.imagenet import ImageNetDataModule
from vvm.data.registry import DATASETS, create_datamodule, dataset_name, register_dataset
from vvm.data.synthetic import SyntheticDataModule

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
