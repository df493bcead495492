"""LightningDataModules: cifar100, cifar10, imagenet, digits, synthetic."""

from vvm.data.base import VisionDataModule, fixed_subset
from vvm.data.synthetic import SyntheticDataModule

__all__ = ["SyntheticDataModule", "VisionDataModule", "fixed_subset"]
