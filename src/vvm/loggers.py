"""Experiment loggers: building one from the config, and logging a CKA result to it.

W&B runs offline unless ``WANDB_MODE=online`` or ``logger.mode=online``: nothing needs an account.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def build_logger(cfg: DictConfig | None) -> Any:
    """``None``/``logger=none`` -> ``False`` (Lightning's "no logger"); else the instantiated logger."""
    if cfg is None or cfg.get("_target_") in (None, "null"):
        return False
    from hydra.utils import instantiate

    target = str(cfg._target_)
    if target.endswith("WandbLogger"):
        mode = os.environ.get("WANDB_MODE") or cfg.get("mode") or "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        Path(cfg.save_dir).mkdir(parents=True, exist_ok=True)
        return instantiate(cfg, mode=mode)
    return instantiate(cfg)


def is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def log_config(logger: Any, cfg: DictConfig) -> None:
    if logger is False or logger is None:
        return
    container = OmegaConf.to_container(cfg, resolve=True)
    if is_wandb(logger):
        logger.experiment.config.update(container, allow_val_change=True)
    else:
        logger.log_hyperparams(container)


def log_cka(logger: Any, res: Any, *, stage: str, image: str | Path | None, step: int) -> None:
    """Heatmap image, the matrix as a table (one row per pair, with layer names and standard error), and
    summary scalars."""
    from vvm.callbacks.cka import mean_offdiagonal

    prefix = "cka" if stage == "final" else f"cka_{stage}"
    scalars = {f"{prefix}/mean_offdiag": mean_offdiagonal(res.matrix.numpy()), f"{prefix}/n_samples": res.n_samples}
    if is_wandb(logger):
        import wandb

        rows = []
        m, se = res.matrix.numpy(), res.stderr.numpy()
        for i, lx in enumerate(res.layers_x):
            for j, ly in enumerate(res.layers_y):
                rows.append([lx, ly, i, j, float(m[i, j]), float(se[i, j])])
        payload: dict[str, Any] = dict(scalars)
        payload[f"{prefix}/table"] = wandb.Table(
            columns=["layer_x", "layer_y", "i", "j", "cka", "stderr"], data=rows
        )
        if image is not None:
            payload[f"{prefix}/heatmap"] = wandb.Image(str(image))
        logger.experiment.log(payload)
    else:
        logger.log_metrics(scalars, step=step)
