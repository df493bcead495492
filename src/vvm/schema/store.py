"""vvm's typed settings registered in Hydra's ConfigStore: the schema every config group stands on.

- ``job_schema``: :class:`vvm.settings.JobSettings`, the base of ``vvm/conf/config.yaml``; its typed fields (``similarity``,
  ``cka``, ``kernel``, ``train``, ``trainer``, ``init``, ``paths``) check the yaml files merged into them;
- ``model/<name>`` and ``compare/<name>``: generated from the model registry (:func:`vvm.models.settings_classes`), no files;
- ``schema/dataset/<name>``, ``schema/logger/<name>``: the bases the yaml files of those groups name in their
  defaults list (``- /schema/dataset/digits@_here_``), so they keep their comments and stay the documented
  defaults while a wrong key or type is refused when the config is composed.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from vvm.models import settings_classes
from vvm.settings.datasets import DATASET_SETTINGS  # not vvm.data: listing them imports no Lightning
from vvm.settings.job import JobSettings
from vvm.settings.loggers import LOGGER_SETTINGS

# the config groups whose settings class is the choice's, a subclass of the field's type in JobSettings
CHOICE_GROUPS = ("model", "compare", "dataset", "logger")


def wandb_group(tag: str) -> str:
    """``${vvm_wandb_group:${tag}}`` (conf/logger/wandb.yaml): in a multirun the sweep's W&B group
    (:func:`vvm.loggers.wandb_run.sweep_group`, which the sweep's summary and joint runs share), else ``tag``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        from vvm.loggers.wandb_run import sweep_group

        return sweep_group(HydraConfig.get().sweep.dir)
    return tag


@functools.cache
def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore and vvm's resolvers into OmegaConf (once per process; before
    any composition)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("vvm_wandb_group", wandb_group, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="job_schema", node=JobSettings)
    for name, cls in settings_classes().items():
        cs.store(group="model", name=name, node=cls)
        cs.store(group="compare", name=name, node=cls)
    for name, settings in DATASET_SETTINGS.items():
        cs.store(group="schema/dataset", name=name, node=settings)
    for name, cls in LOGGER_SETTINGS.items():
        cs.store(group="schema/logger", name=name, node=cls)


def group_class(group: str, choice: str | None) -> type | None:
    """The settings class of ``group=choice`` for the :data:`CHOICE_GROUPS` (None: unknown or no settings)."""
    if choice is None:
        return None
    if group in ("model", "compare"):
        return settings_classes().get(choice)
    if group == "dataset":
        return DATASET_SETTINGS.get(choice)
    if group == "logger":
        return LOGGER_SETTINGS.get(choice)
    return None


def field_classes(cls: type) -> dict[str, Any]:
    """``{field: type}`` of a settings dataclass, ``X | None`` unwrapped."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        kind = hints.get(f.name, Any)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
            kind = args[0]
        out[f.name] = kind
    return out


def is_settings(kind: Any) -> bool:
    return isinstance(kind, type) and is_dataclass(kind)


__all__ = ["CHOICE_GROUPS", "field_classes", "group_class", "is_settings", "register_configs"]
