"""The Hydra adapter: vvm's typed settings as Hydra's schema (:mod:`.store`), the unknown-key checks
(:mod:`.keys`), and the one conversion of a composed config into :class:`vvm.settings.JobSettings`
(:func:`to_settings`, which runs the cross-field rules of :mod:`vvm.settings.rules`). Below this layer nothing reads a
``DictConfig``: every module receives the objects made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from vvm.models import settings_classes
from vvm.schema.keys import added_keys, override_errors
from vvm.schema.renamed import RENAMED, rename_config, rename_overrides
from vvm.schema.store import CHOICE_GROUPS, field_classes, is_settings, register_configs
from vvm.settings import ConfigError
from vvm.settings.datasets import DATASET_SETTINGS
from vvm.settings.job import JobSettings
from vvm.settings.loggers import LOGGER_SETTINGS
from vvm.settings.rules import check_rules

# the Hydra configs, inside the package (a wheel carries them; Hydra finds them as pkg://vvm/conf)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def to_settings(cfg: DictConfig) -> JobSettings:
    """The composed config as typed objects, checked: keys added to typed nodes, each number's range and the
    cross-field rules (:mod:`vvm.settings.rules`). Raises :class:`~vvm.settings.ConfigError` naming full keys."""
    register_configs()
    if (
        "hydra" in cfg
    ):  # composed with return_hydra_config (tests, compose()): Hydra's own node is not the job's
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pop("hydra")
    errors = added_keys(cfg)
    if errors:
        raise ConfigError("; ".join(errors))
    try:
        job = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(" ".join(str(e).split("\n")[:2])) from None
    assert isinstance(job, JobSettings)
    return check_rules(job)


def _node(cls: type, values: Any) -> Any:
    """``values`` as a typed node of ``cls``, keys ``cls`` no longer has dropped (nested settings too)."""
    if not isinstance(values, dict):
        return values
    typed = OmegaConf.structured(cls)
    kinds = field_classes(cls)
    for k, v in values.items():
        if k in kinds:
            typed[k] = _node(kinds[k], v) if is_settings(kinds[k]) else v
    return typed


def _choice_class(key: str, values: dict[str, Any], dataset: str) -> type:
    """The settings class of a stored ``model``/``compare``/``dataset``/``logger`` node: the model by its name
    (any other name is a timm architecture), the dataset by the job's, the logger by its ``kind`` (a result
    written before loggers named their kind: W&B's settings are the ones with a ``project``)."""
    if key == "dataset":
        return DATASET_SETTINGS[dataset]
    if key == "logger":
        return LOGGER_SETTINGS[values.get("kind") or ("wandb" if "project" in values else "csv")]
    models = settings_classes()
    return models.get(str(values.get("name")), models["timm"])


def from_record(config: dict[str, Any], dataset: str) -> JobSettings:
    """Settings back from a stored ``config`` (result.json) of a job on ``dataset``; a renamed key is read as its
    new one (:mod:`vvm.schema.renamed`; silently: a stored file is not the user's to edit), keys the schema no longer has (an older vvm's
    ``_target_``...) are dropped."""
    register_configs()
    kinds = field_classes(JobSettings)
    out = OmegaConf.structured(JobSettings)
    for key, v in rename_config(dict(config), warn=False).items():
        if key not in kinds:
            continue
        cls = _choice_class(key, v, dataset) if key in CHOICE_GROUPS and isinstance(v, dict) else kinds[key]
        out[key] = _node(cls, v) if is_settings(cls) else v
    return to_settings(out)


def compose(overrides: list[str] | None = None, *, output_dir: str | Path | None = None) -> JobSettings:
    """``python -m vvm <overrides>``'s settings, composed in this process (for the Python API and tests):
    Hydra's compose API, with its runtime set so that ``${hydra:...}`` resolves; a renamed key is taken as its
    new one with a warning (:mod:`vvm.schema.renamed`)."""
    return to_settings(compose_config(overrides, output_dir=output_dir))


def compose_config(overrides: list[str] | None = None, *, output_dir: str | Path | None = None) -> DictConfig:
    """The composed config (a ``DictConfig``, Hydra's runtime set) before :func:`to_settings`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(
            "config", overrides=[*rename_overrides(list(overrides or [])), *extra], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


__all__ = [
    "CONFIG_DIR",
    "RENAMED",
    "ConfigError",
    "compose",
    "compose_config",
    "from_record",
    "override_errors",
    "register_configs",
    "rename_config",
    "rename_overrides",
    "to_settings",
]
