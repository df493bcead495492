"""The fit: a :class:`~vvm.train.module.VisionModule` trained with the term project's recipe (``train.*``, a
:class:`~vvm.settings.TrainSettings`) by a Lightning Trainer built once from the job's Trainer factory
(``trainer.*``), with the speed switches of ``train.speed`` (precision, device-resident data, channels_last,
compile) and :class:`SaveLast` for resuming. A :class:`Fit` holds all that until a model is handed to it.

Which weights a job needs, and whether a fit is due at all, is :func:`vvm.pipeline.weights.load_or_train`'s decision.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from vvm.data.batches import exact_length
from vvm.io import temporary_path
from vvm.models.base import VisionModel
from vvm.settings import TrainerSettings, TrainSettings
from vvm.train.module import VisionModule, resolve_auto

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- from the settings
def trainer_factory(settings: TrainerSettings) -> functools.partial:
    """``trainer.*`` as a Trainer waiting for the arguments of its use (callbacks, logger, the fit's precision...)."""
    return functools.partial(pl.Trainer, **settings.arguments())


def vision_module(model: VisionModel, recipe: TrainSettings) -> VisionModule:
    """The LightningModule for ``model`` with the recipe's optimisation and ``speed.compile``/``channels_last``."""
    return VisionModule(
        model,
        epochs=recipe.epochs,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        compile=recipe.speed.compile,
        channels_last=recipe.speed.channels_last,
    )


# ---------------------------------------------------------------------------------------------- speed choices
def planned_device(accelerator: Any) -> torch.device:
    """The device a Trainer with ``accelerator`` will train on, known before the Trainer is built."""
    a = str(accelerator or "auto").lower()
    if a in ("gpu", "cuda") or (a == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if a == "mps" or (a == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def fit_precision(setting: Any, trainer_precision: Any, device: Any) -> Any:
    """``train.speed.precision``: the Trainer's precision for the fit. ``auto``/null: ``trainer.precision``,
    except that a float32 trainer trains in ``bf16-mixed`` where bf16 is fast: a CUDA GPU with bf16 tensor cores
    (compute capability 8.0 and later; older GPUs only emulate bf16), or a CPU with AMX (bf16 matrix units, Xeon
    Sapphire Rapids and later; see docs/benchmarks.md). Any other value is used as it is. The CKA pass keeps ``trainer.precision``."""
    if setting is not None and str(setting).lower() != "auto":
        return setting
    if trainer_precision not in (None, 32, "32", "32-true"):
        return trainer_precision
    kind = getattr(device, "type", None)
    if (kind == "cuda" and _cuda_has_bf16(device)) or (kind == "cpu" and _cpu_has_amx()):
        return "bf16-mixed"
    return trainer_precision


# bf16 tensor cores: Ampere (compute capability 8.0) and later; ``torch.cuda.is_bf16_supported()`` also says yes
# where bf16 is only emulated (slower than float32)
NATIVE_BF16_CAPABILITY = (8, 0)


def _cuda_has_bf16(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16_CAPABILITY


def _cpu_has_amx() -> bool:
    """Whether the CPU has AMX bf16 units, from the kernel's CPU flags (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def use_device_resident(setting: Any, datamodule: Any, device: Any) -> bool:
    """``train.speed.gpu_resident``: ``auto`` keeps the training split on the device when the device is a GPU,
    the datamodule has an in-memory form (``as_tensors``) and it takes at most a quarter of the free memory;
    ``true`` does so on any device (the CPU too), ``false`` never."""
    from vvm.train.gpu_data import images_fit

    auto = setting is None or (isinstance(setting, str) and setting.lower() == "auto")
    if not resolve_auto(setting, device):
        return False
    try:
        images, _labels = datamodule.as_tensors("train")
    except NotImplementedError as e:
        if auto:
            log.info("train.speed.gpu_resident=auto: %s; using its dataloaders", e)
            return False
        raise ValueError(
            f"train.speed.gpu_resident=true: {e} (set train.speed.gpu_resident=false or auto)"
        ) from e
    if auto and not images_fit(images, device):
        log.info(
            "train.speed.gpu_resident=auto: the training split (%.0f MB) does not fit in a quarter of the free "
            "memory of %s; using its dataloaders",
            images.numel() * images.element_size() / 2**20,
            device,
        )
        return False
    return True


# ---------------------------------------------------------------------------------------------- the fit
class SaveLast(pl.Callback):
    """At the end of a training epoch (after its validation), save the whole training state to ``path``
    (write to a temporary file, then ``os.replace``), so that an interrupted training resumes from it.

    Saves at the end of the first epoch, then whenever ``every_s`` seconds have passed since the last save (0:
    every epoch; rank 0's clock decides for all ranks), never after the last epoch (the final checkpoint
    follows). The checkpoint also holds the random number generators' states (torch, CUDA, numpy, random) as
    they were when it was saved, and a resumed fit starts from them, so the data order and the augmentations
    of the epochs that follow are those of an uninterrupted run: resumed equals uninterrupted (one process;
    under DDP every rank gets rank 0's states). A save that fails (a full disk) is a warning: the training
    goes on, without a resume point.
    """

    def __init__(self, path: str | Path, every_s: float = 0.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.every_s = float(every_s)
        self._last = time.monotonic()
        self._saved = False
        self._rng: dict[str, Any] | None = None
        self._fit_started = False

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict.get("rng")
        if self._fit_started:  # strategies that restore callbacks after on_fit_start
            self._restore_rng()

    def _restore_rng(self) -> None:
        if self._rng is not None:
            set_rng_states(self._rng)
            self._rng = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before the training loop draws the first data order of the resumed epoch
        self._fit_started = True
        self._restore_rng()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs:
            return
        due = not self._saved or time.monotonic() - self._last >= self.every_s
        if not trainer.strategy.broadcast(due, src=0):
            return
        tmp = temporary_path(self.path)
        try:
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp, weights_only=False)  # rank 0 writes, every rank waits for it
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        except OSError as e:
            if trainer.world_size > 1:
                raise
            tmp.unlink(missing_ok=True)
            log.warning(
                "could not save the training state to %s (%s); training goes on without it", self.path, e
            )
        self._saved = True
        self._last = time.monotonic()


def rng_states() -> dict[str, Any]:
    """The global random number generators' states as tensors and plain values (a checkpoint that
    ``torch.load(weights_only=True)`` reads)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_py = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), torch.tensor(state, dtype=torch.int64), gauss_py],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_py = states["python"]
    random.setstate((version, tuple(int(v) for v in state.tolist()), gauss_py))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class Fit:
    """A training waiting for its model: the recipe, the Trainer factory, the data (its training split), the
    seed of the data order, and what the fit reports to. ``fit(model, last)`` trains ``model`` in place."""

    recipe: TrainSettings
    trainer: functools.partial
    datamodule: Any
    seed: int = 0
    logger: Any = None
    callbacks: list = field(default_factory=list)
    output_dir: str | Path | None = None

    def __call__(self, model: VisionModel, last: Path) -> tuple[pl.Trainer, dict[str, Any]]:
        return train(model, self, last=last)


def fit_trainer(fit: Fit, *, last: Path) -> pl.Trainer:
    """The fit's Trainer, built once: the factory with the recipe's epochs and clip, the fit's precision, and
    the callbacks PreciseBN (first: the CKA callback's hooks must not see its forward passes), the fit's own
    callbacks and :class:`SaveLast`."""
    from vvm.train.precise_bn import PreciseBN

    recipe, factory = fit.recipe, fit.trainer
    device = planned_device(factory.keywords.get("accelerator"))
    kw: dict[str, Any] = {
        "max_epochs": int(recipe.epochs),
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        # not in the term project's recipe (null): the Lambda-ResNets' first steps need it (README)
        "gradient_clip_val": recipe.gradient_clip_val,
        "precision": fit_precision(recipe.speed.precision, factory.keywords.get("precision"), device),
    }
    if fit.output_dir is not None and "default_root_dir" not in factory.keywords:
        kw["default_root_dir"] = str(fit.output_dir)
    save_last = SaveLast(last, every_s=float(recipe.speed.save_last_every_s or 0))
    own = [PreciseBN(int(recipe.precise_bn or 0)), *fit.callbacks, save_last]
    return factory(**kw, logger=fit.logger if fit.logger else False, callbacks=own)


def training_data(fit: Fit, device: torch.device) -> tuple[Any, bool]:
    """The datamodule the fit reads, and whether its training split is device-resident."""
    from vvm.train.gpu_data import DeviceResidentDataModule

    datamodule, speed = fit.datamodule, fit.recipe.speed
    if not use_device_resident(speed.gpu_resident, datamodule, device):
        return datamodule, False
    resident = DeviceResidentDataModule(
        datamodule,
        batch_size=int(getattr(datamodule, "batch_size", fit.recipe.batch_size)),
        seed=int(fit.seed),
        channels_last=resolve_auto(speed.channels_last, device),
    )
    return resident, True


def train(model: VisionModel, fit: Fit, *, last: Path) -> tuple[pl.Trainer, dict[str, Any]]:
    """Fit ``model`` as ``fit`` says on its datamodule's training split, resuming from ``last`` when it exists;
    returns the Trainer and the facts of the training. Afterwards every rank holds rank 0's weights (the
    BatchNorm statistics of a rank are its own until then)."""
    module = vision_module(model, fit.recipe)
    trainer = fit_trainer(fit, last=last)
    device = trainer.strategy.root_device
    dm, resident = training_data(fit, device)
    ckpt_path = str(last) if last.is_file() else None
    if ckpt_path:
        log.info("resuming the interrupted training from %s", ckpt_path)
    t = time.perf_counter()
    with exact_length():
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t
    if trainer.interrupted:
        raise RuntimeError(f"training was interrupted; rerun the job to resume from {last}")
    share_rank_zero_buffers(trainer, model)
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


def share_rank_zero_buffers(trainer: pl.Trainer, model: VisionModel) -> None:
    """Under DDP the parameters agree on every rank, the buffers (BatchNorm statistics) need not: give every
    rank rank 0's, so that all ranks measure the weights rank 0 saves."""
    if trainer.world_size <= 1:
        return
    ours = dict(model.net.named_buffers())
    theirs = trainer.strategy.broadcast({k: v.detach().cpu() for k, v in ours.items()}, src=0)
    with torch.no_grad():
        for k, v in ours.items():
            v.copy_(theirs[k])


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None else float(v)


__all__ = [
    "Fit",
    "SaveLast",
    "fit_precision",
    "fit_trainer",
    "planned_device",
    "share_rank_zero_buffers",
    "train",
    "trainer_factory",
    "use_device_resident",
    "vision_module",
]
