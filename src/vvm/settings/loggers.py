"""The loggers' settings (``logger=wandb``, ``logger=csv``): what :mod:`vvm.loggers` builds Lightning's loggers
from."""

from dataclasses import dataclass, field


@dataclass
class WandbSettings:
    """``logger=wandb``: Lightning's WandbLogger. ``mode``: ``auto`` (online when this machine has a W&B API key
    and W&B answers within seconds, else offline), ``online``, ``offline`` or ``disabled`` (default:
    ``$WANDB_MODE``, else ``auto``; see :mod:`vvm.loggers.wandb_run`)."""

    project: str = "vvm"
    group: str | None = None
    name: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    save_dir: str = "."
    mode: str = "auto"
    log_model: bool = False


@dataclass
class CSVSettings:
    """``logger=csv``: Lightning's CSVLogger in the run directory."""

    save_dir: str = "."
    name: str = "csv"
