"""The job-assembly layer's view of the config: vvm's typed settings as Hydra's schema (:mod:`.store`), the
unknown-key checks (:mod:`.keys`), the cross-field rules (:mod:`.rules`), and the one conversion of a composed
config into :class:`vvm.settings.JobSettings` (:func:`to_settings`). Below this layer nothing reads a
``DictConfig``: every module receives the objects made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from vvm.schema.keys import added_keys, override_errors
from vvm.schema.models import model_settings_classes
from vvm.schema.renamed import RENAMED, rename_config, rename_overrides
from vvm.schema.rules import check_rules, rule_errors
from vvm.schema.store import register_configs
from vvm.settings import ConfigError, plain
from vvm.settings.job import JobSettings

# the Hydra configs, inside the package (a wheel carries them; Hydra finds them as pkg://vvm/conf)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def to_settings(cfg: DictConfig) -> JobSettings:
    """The composed config as typed objects, checked: keys added to typed nodes, each number's range and the
    cross-field rules (:mod:`vvm.schema.rules`). Raises :class:`~vvm.settings.ConfigError` naming full keys."""
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


def record(job: JobSettings) -> dict[str, Any]:
    """The job's settings as plain values: what result.json stores under ``config`` (and resume compares)."""
    return plain(job)


def from_record(config: dict[str, Any], dataset: str) -> JobSettings:
    """Settings back from a stored ``config`` (result.json) of a job on ``dataset``; a renamed key is read as its
    new one (:mod:`vvm.schema.renamed`, with a warning), keys the schema no longer has (an older vvm's
    ``_target_``...) are dropped."""
    from dataclasses import fields

    from vvm.data import DATASETS
    from vvm.schema.store import LOGGERS, field_classes

    register_configs()
    classes = model_settings_classes()

    def node(cls: type, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        known = {f.name for f in fields(cls)}
        typed = OmegaConf.structured(cls)
        kinds = field_classes(cls)
        for k, v in values.items():
            if k in known:
                sub = kinds[k]
                typed[k] = (
                    node(sub, v) if isinstance(sub, type) and hasattr(sub, "__dataclass_fields__") else v
                )
        return typed

    def model_class(values: dict) -> type:
        return classes.get(str(values.get("name")), classes["timm"])

    values = rename_config(dict(config))
    out = OmegaConf.structured(JobSettings)
    for key, v in values.items():
        if key in ("model", "compare") and isinstance(v, dict):
            out[key] = node(model_class(v), v)
        elif key == "dataset" and isinstance(v, dict):
            out[key] = node(DATASETS[dataset].settings, v)
        elif key == "logger" and isinstance(v, dict):
            cls = LOGGERS["wandb" if "project" in v else "csv"]
            out[key] = node(cls, v) if cls is not None else None
        elif key in field_classes(JobSettings):
            kind = field_classes(JobSettings)[key]
            out[key] = node(kind, v) if hasattr(kind, "__dataclass_fields__") else v
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
    "record",
    "register_configs",
    "rename_config",
    "rename_overrides",
    "rule_errors",
    "to_settings",
]
