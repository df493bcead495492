"""Compose vvm's configs in-process (Hydra's compose API), as the CLI would, with outputs in a temp dir: as typed
settings (:func:`compose_settings`, what the job runs on) or the composed config before conversion."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from vvm.schema import compose, compose_config
from vvm.settings.job import JobSettings


def compose_settings(overrides: list[str], out_dir: Path | None = None) -> JobSettings:
    return compose(list(overrides), output_dir=out_dir)


def compose_cfg(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    return compose_config(list(overrides), output_dir=out_dir)
