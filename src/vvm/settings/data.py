"""What every dataset's settings (``dataset.*``) hold. Each datamodule in :mod:`vvm.data` declares its own
subclass (with what only it has, say ImageNet's ``train_root``) and registers both under the dataset's name.

Settings marked :func:`~vvm.settings.base.not_recipe` do not change the training split, so they are not part of
the checkpoint cache's key. The CKA pass's batching (``similarity.batch_size``, ``similarity.max_samples``, ``similarity.shuffle``)
and the training batch size are the job's, handed to the datamodule when it is built.
"""

from dataclasses import dataclass
from typing import Any

from vvm.settings.base import OneOf, choices, not_recipe, number

Split = choices("Split", ("train", "test"), "the split the CKA pass reads: test | train")


@dataclass
class DatasetSettings:
    num_classes: int = number(10, minimum=1)
    limit: int | None = number(None, minimum=1, why="a fixed subset of each split (null: all of it)")
    root: str = not_recipe("data")
    download: bool = not_recipe(True)
    num_workers: int = not_recipe(0)
    pin_memory: Any = not_recipe("auto", rule=OneOf(("auto", True, False)))  # auto: pinned when feeding CUDA
    split: Split = not_recipe(Split.test)
    probe_size: int | None = not_recipe(1024)
