"""Getting the weights an init asks for.

- ``init=random``: nothing to do, the seeded construction is the initialisation.
- ``init=pretrained`` with ``init.checkpoint``: load it (any model).
- ``init=pretrained`` on a timm model (``vit_l32``, ``timm``): the published weights, through
  :func:`vvm.models.init.apply_init`; nothing is trained.
- ``init=pretrained`` on a CIFAR model (r18 r34 r50 lambda_r*): the cached checkpoint of this recipe under
  ``paths.checkpoints`` (see :mod:`vvm.train.cache`); when there is none, train with the seed's recipe
  (:class:`~vvm.train.module.VisionModule`, a Lightning Trainer built from ``cfg.trainer``), resuming from
  ``<key>.last.ckpt`` when an earlier training was interrupted, save atomically, then load the saved file.

:func:`prepare_weights` returns the facts that go into result.json: ``weights`` (a sentence), ``trained``,
``checkpoint``, and after a training (or from the cached file) ``train_accuracy``, ``val_accuracy``,
``train_epochs``, ``train_seconds``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from vvm.models.base import VisionModel
from vvm.train.cache import cache_paths, read_facts, save_trained, temporary_path

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- loading
def _init_dict(cfg: DictConfig) -> dict[str, Any]:
    return (
        OmegaConf.to_container(cfg.init, resolve=True) if isinstance(cfg.init, DictConfig) else dict(cfg.init)
    )


def is_cifar(model: VisionModel) -> bool:
    try:
        from vvm.models.init import is_cifar_model
    except ImportError:  # the models package without its init module
        return model.family in ("resnet", "lambda")
    return is_cifar_model(model)


def load_weights(model: VisionModel, init_cfg: dict[str, Any], dataset_name: str | None) -> None:
    """Load what ``init_cfg`` names (``checkpoint``, or published weights) through the models' ``apply_init``;
    without it, a network state dict or a checkpoint with ``state_dict`` of ``model.net.*`` keys."""
    try:
        from vvm.models.init import apply_init
    except ImportError:
        import torch

        obj = torch.load(init_cfg["checkpoint"], map_location="cpu", weights_only=True)
        state = obj.get("state_dict", obj)
        prefix = "model.net."
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        model.net.load_state_dict(state, strict=True)
        return
    apply_init(model, init_cfg, dataset_name=dataset_name)


def _published_source(model: VisionModel, init_cfg: dict[str, Any]) -> str:
    if init_cfg.get("weights_file"):
        return str(init_cfg["weights_file"])
    pcfg = dict(getattr(model.net, "pretrained_cfg", None) or {})
    return str(pcfg.get("hf_hub_id") or pcfg.get("url") or pcfg.get("architecture") or model.name)


# ---------------------------------------------------------------------------------------------- the entry point
# what result.json repeats from a cached checkpoint's facts (the training that made it)
CACHED_FACTS = (
    "train_accuracy",
    "val_accuracy",
    "train_loss",
    "train_epochs",
    "train_seconds",
    "train_precision",
)


def prepare_weights(
    model: VisionModel, cfg: DictConfig, datamodule: Any, *, logger: Any = None, callbacks: list | None = None
) -> dict[str, Any]:
    """Put the weights ``cfg.init`` asks for into ``model``; returns facts for result.json.

    ``logger`` and ``callbacks`` (the CKA callback, whose ``every_n_epochs`` probes run during the fit) go to
    the training Trainer when a training is needed.
    """
    init = cfg.init.name
    if init == "random":
        return {"weights": f"random (seed {cfg.seed})", "trained": False}
    if init != "pretrained":
        raise ValueError(f"init={init!r} is not known: use init=random or init=pretrained")
    init_cfg = _init_dict(cfg)
    dataset_name = getattr(datamodule, "name", None)
    if init_cfg.get("checkpoint"):
        path = Path(str(init_cfg["checkpoint"])).expanduser()
        load_weights(model, init_cfg, dataset_name)
        return {"weights": f"checkpoint {path}", "trained": False, "checkpoint": str(path)}
    if not is_cifar(model):
        load_weights(model, init_cfg, dataset_name)
        return {"weights": f"published weights ({_published_source(model, init_cfg)})", "trained": False}

    path, last = cache_paths(cfg, str(dataset_name))
    if path.is_file():
        log.info("init=pretrained: using the cached checkpoint %s", path)
        load_weights(model, {**init_cfg, "checkpoint": str(path)}, dataset_name)
        facts = read_facts(path)
        return {
            "weights": f"cached checkpoint {path}",
            "trained": False,
            "checkpoint": str(path),
            **{k: facts.get(k) for k in CACHED_FACTS},
        }

    log.info(
        "init=pretrained: no checkpoint at %s, training %s on %s for %d epochs",
        path,
        cfg.model.name,
        dataset_name,
        int(cfg.train.epochs),
    )
    trainer, facts = train(model, cfg, datamodule, last=last, logger=logger, callbacks=callbacks)
    if trainer.is_global_zero:
        save_trained(path, model.net, dataset_name=str(dataset_name), facts={**facts, "key": path.stem})
        if last.exists():
            last.unlink()
    trainer.strategy.barrier("vvm-checkpoint-saved")
    load_weights(model, {**init_cfg, "checkpoint": str(path)}, dataset_name)
    log.info(
        "init=pretrained: trained in %.1f s (train acc %s, val acc %s), saved %s",
        facts["train_seconds"],
        facts.get("train_accuracy"),
        facts.get("val_accuracy"),
        path,
    )
    return {
        "weights": f"trained {facts['train_epochs']} epochs, saved to {path}",
        "trained": True,
        "checkpoint": str(path),
        **facts,
    }


# ---------------------------------------------------------------------------------------------- training
class SaveLast(pl.Callback):
    """At the end of a training epoch (after its validation), save the whole training state to ``path``
    (write to a temporary file, then ``os.replace``), so that an interrupted training resumes from it.

    Saves when ``every_s`` seconds have passed since the last save (0: every epoch; rank 0's clock decides for
    all ranks), never after the last epoch (the final checkpoint follows).
    """

    def __init__(self, path: str | Path, every_s: float = 0.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.every_s = float(every_s)
        self._last = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs:
            return
        if not trainer.strategy.broadcast(time.monotonic() - self._last >= self.every_s, src=0):
            return
        tmp = temporary_path(self.path)
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # rank 0 writes, every rank waits for it
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._last = time.monotonic()


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kw = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") is not None else {}
    assert isinstance(kw, dict)
    return kw


def _output_dir(cfg: DictConfig) -> str | None:
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # composed without Hydra's runtime (no ${hydra:...})
        return None


def use_device_resident(setting: Any, datamodule: Any, device: Any) -> bool:
    """``train.gpu_resident``: ``auto`` keeps the training split on the device when the device is a GPU, the
    datamodule has an in-memory form (``as_tensors``) and it takes at most a quarter of the free memory;
    ``true`` does so on any device (the CPU too), ``false`` never."""
    from vvm.train.gpu_data import images_fit
    from vvm.train.module import resolve_auto

    auto = setting is None or (isinstance(setting, str) and setting.lower() == "auto")
    if not resolve_auto(setting, device):
        return False
    try:
        images, _labels = datamodule.as_tensors("train")
    except NotImplementedError as e:
        if auto:
            log.info("train.gpu_resident=auto: %s; using its dataloaders", e)
            return False
        raise ValueError(f"train.gpu_resident=true: {e} (set train.gpu_resident=false or auto)") from e
    if auto and not images_fit(images, device):
        log.info(
            "train.gpu_resident=auto: the training split (%.0f MB) does not fit in a quarter of the free "
            "memory of %s; using its dataloaders",
            images.numel() * images.element_size() / 2**20,
            device,
        )
        return False
    return True


def fit_precision(setting: Any, trainer_precision: Any, device: Any) -> Any:
    """``train.precision``: the Trainer's precision for the fit. ``auto``/null: ``trainer.precision``, except
    that a float32 trainer trains in ``bf16-mixed`` where bf16 is fast: a CUDA GPU that supports it, or a CPU
    with AMX (bf16 matrix units, Xeon Sapphire Rapids and later; measured 2.5x the float32 speed for r18 on 2
    cores). Any other value is used as it is. The CKA pass keeps ``trainer.precision``."""
    if setting is not None and str(setting).lower() != "auto":
        return setting
    if trainer_precision not in (None, 32, "32", "32-true"):
        return trainer_precision
    kind = getattr(device, "type", None)
    if (kind == "cuda" and _cuda_has_bf16()) or (kind == "cpu" and _cpu_has_amx()):
        return "bf16-mixed"
    return trainer_precision


def _cuda_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _cpu_has_amx() -> bool:
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # an older torch or another platform
        return False


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None else float(v)


def train(
    model: VisionModel,
    cfg: DictConfig,
    datamodule: Any,
    *,
    last: Path,
    logger: Any = None,
    callbacks: list | None = None,
) -> tuple[pl.Trainer, dict[str, Any]]:
    """Fit ``model`` with the seed's recipe (``cfg.train``) on ``datamodule``'s training split, resuming from
    ``last`` when it exists; returns the Trainer and the facts of the training."""
    from vvm.train.gpu_data import DeviceResidentDataModule
    from vvm.train.module import VisionModule, resolve_auto
    from vvm.train.precise_bn import PreciseBN

    train_cfg = OmegaConf.to_container(cfg.train, resolve=True)
    assert isinstance(train_cfg, dict)
    epochs = int(train_cfg["epochs"])
    module = VisionModule(model, **train_cfg)
    kw = {
        **trainer_kwargs(cfg),
        "max_epochs": epochs,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        # not in the seed's recipe (null): Lambda-ResNets start with 12-18x ResNet-18's gradient norm
        "gradient_clip_val": train_cfg.get("gradient_clip_val"),
    }
    out_dir = _output_dir(cfg)
    if out_dir is not None:
        kw.setdefault("default_root_dir", out_dir)
    # PreciseBN first: the CKA callback's hooks must not see its forward passes
    save_last = SaveLast(last, every_s=float(train_cfg.get("save_last_every_s") or 0))
    own = [PreciseBN(int(train_cfg.get("precise_bn") or 0)), *(callbacks or []), save_last]
    trainer = pl.Trainer(**kw, logger=logger if logger else False, callbacks=own)
    device = trainer.strategy.root_device
    precision = fit_precision(train_cfg.get("precision"), kw.get("precision"), device)
    if precision != kw.get("precision"):
        kw["precision"] = precision
        trainer = pl.Trainer(**kw, logger=logger if logger else False, callbacks=own)
    resident = use_device_resident(train_cfg.get("gpu_resident", "auto"), datamodule, device)
    dm = datamodule
    if resident:
        dm = DeviceResidentDataModule(
            datamodule,
            batch_size=int(getattr(datamodule, "batch_size", train_cfg.get("batch_size", 256))),
            seed=int(cfg.seed),
            channels_last=resolve_auto(train_cfg.get("channels_last", "auto"), device),
        )
    ckpt_path = str(last) if last.is_file() else None
    if ckpt_path:
        log.info("resuming the interrupted training from %s", ckpt_path)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t
    if trainer.interrupted:
        raise RuntimeError(f"training was interrupted; rerun the job to resume from {last}")
    m = trainer.callback_metrics
    facts = {
        "train_epochs": int(trainer.current_epoch),
        "train_seconds": round(seconds, 3),
        "train_accuracy": _metric(m, "train/acc"),
        "train_loss": _metric(m, "train/loss"),
        "val_accuracy": _metric(m, "val/acc"),
        "gpu_resident": resident,
        "resumed_from": ckpt_path,
        "train_device": str(device),
        "train_precision": str(trainer.precision),
    }
    return trainer, facts


__all__ = ["SaveLast", "load_weights", "prepare_weights", "train", "use_device_resident"]
