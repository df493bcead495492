"""The loggers' settings (``logger=wandb``, ``logger=csv``): what :mod:`vvm.loggers` builds Lightning's loggers
from. Each is a :class:`LoggerSettings` whose ``kind`` names it (stored in result.json with the rest, so that
:func:`vvm.schema.from_record` knows the class back); :data:`LOGGER_SETTINGS` lists them by ``kind``."""

from dataclasses import dataclass, field


@dataclass
class LoggerSettings:
    """What every logger's settings hold: ``kind``, the logger they configure (``logger=<kind>``)."""

    kind: str = ""


@dataclass
class WandbSettings(LoggerSettings):
    """``logger=wandb``: Lightning's WandbLogger. ``mode``: ``auto`` (online when this machine has a W&B API key
    and W&B answers within seconds, else offline), ``online``, ``offline`` or ``disabled`` (default:
    ``$WANDB_MODE``, else ``auto``; see :mod:`vvm.loggers.wandb_run`)."""

    kind: str = "wandb"
    project: str = "vvm"
    group: str | None = None
    name: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    save_dir: str = "."
    mode: str = "auto"
    log_model: bool = False


@dataclass
class CSVSettings(LoggerSettings):
    """``logger=csv``: Lightning's CSVLogger in the run directory."""

    kind: str = "csv"
    save_dir: str = "."
    name: str = "csv"


# each logger's settings by ``kind`` (``logger=none``: no settings, the node is null)
LOGGER_SETTINGS: dict[str, type[LoggerSettings]] = {c.kind: c for c in (WandbSettings, CSVSettings)}
