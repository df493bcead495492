"""Getting the weights an init asks for: random (nothing to do) or pretrained."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vvm.models.base import VisionModel


def prepare_weights(model: VisionModel, cfg: DictConfig, datamodule: Any, *, logger: Any = None, callbacks: list | None = None
) -> dict[str, Any]:
    """Put the weights ``cfg.init`` asks for into ``model``; returns facts for result.json."""
    init = cfg.init.name
    if init == "random":
        return {"weights": f"random (seed {cfg.seed})"}
    raise ValueError(f"init={init!r} is not supported yet")
