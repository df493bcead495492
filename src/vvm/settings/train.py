"""The training recipe (``train.*``), its speed switches (``train.speed.*``) and the Lightning Trainer's
arguments (``trainer.*``).

Every field of :class:`TrainSettings` but ``speed`` is part of the recipe, and so of the checkpoint cache's key
(:mod:`vvm.train.cache`): adding a recipe setting is adding one field here.
"""

from dataclasses import dataclass, field, fields
from typing import Any

from vvm.settings.base import number, one_of, plain

AUTO_SWITCH = ("auto", True, False)


@dataclass
class SpeedSettings:
    """``train.speed.*``: how fast a training runs, not the weights it gives (not part of the cache key)."""

    precision: str = "auto"  # auto: trainer.precision, but bf16-mixed where bf16 is native and fast
    gpu_resident: Any = one_of("auto", *AUTO_SWITCH)
    channels_last: Any = one_of("auto", *AUTO_SWITCH)
    compile: bool = False
    save_last_every_s: float = number(60.0, minimum=0.0, why="seconds between resume points (0: every epoch)")


@dataclass
class TrainSettings:
    """``train.*``: the term project's CIFAR recipe (SGD + momentum, cosine schedule, cross-entropy)."""

    epochs: int = number(100, minimum=0, why="a number of epochs")
    batch_size: int = number(256, minimum=1, why="at least 1 example per training batch")
    lr: float = number(0.1, above=0.0, why="the peak learning rate")
    momentum: float = number(0.9, minimum=0.0)
    weight_decay: float = number(5.0e-4, minimum=0.0)
    gradient_clip_val: float | None = number(None, above=0.0, why="a gradient-norm clip (null: none)")
    precise_bn: int = number(4096, minimum=0, why="0 (off) or a number of training images")
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def recipe(self) -> dict[str, Any]:
        """The settings that change the trained weights (all but ``speed``), as plain values."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "speed"}


@dataclass
class TrainerSettings:
    """``trainer.*``: arguments of ``pytorch_lightning.Trainer`` shared by the fit and the CKA pass."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = number(1, minimum=1)
    precision: str = "32-true"  # the CKA pass's precision; the fit's is train.speed.precision
    sync_batchnorm: bool = False
    benchmark: bool | None = None
    deterministic: Any = False
    enable_model_summary: bool = False
    enable_progress_bar: bool = True

    def arguments(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}
