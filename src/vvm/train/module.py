"""The LightningModule: a VisionModel with the term project's CIFAR training recipe and accuracy logging."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from vvm.data.batches import IGNORE_LABEL
from vvm.models.base import VisionModel


def resolve_auto(value: Any, device: torch.device) -> bool:
    """``"auto"``/``None`` -> on CUDA only; anything else -> its truth value (``"false"`` is false)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return device.type == "cuda"
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return bool(value)


def set_memory_format(module: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """``module`` with its 4-D parameters and buffers (2-D convolutions' weights) and their gradients in
    ``memory_format``; the others as they are. ``module.to(memory_format=...)`` converts 5-D tensors too, and
    a 5-D tensor cannot take ``channels_last`` (timm's ``LambdaLayer`` has a Conv3d: "required rank 4 tensor
    to use channels_last format")."""
    return module._apply(lambda t: t.contiguous(memory_format=memory_format) if t.dim() == 4 else t)


class VisionModule(pl.LightningModule):
    """SGD (lr 0.1, momentum 0.9, weight decay 5e-4) with a cosine schedule over ``epochs``, cross-entropy,
    top-1 accuracy for train, validation and test.

    Speed options (``train.speed.*``), which do not change the recipe: ``channels_last`` (``"auto"``: on
    CUDA) converts the model and its inputs to channels_last memory format for the fit, and back afterwards;
    ``compile`` runs the training steps through ``torch.compile`` (validation and test stay eager, so CKA's
    forward hooks see every module). Mixed precision is the fit Trainer's ``precision``
    (``train.speed.precision``). Every argument is explicit: an unknown one is an error.
    """

    def __init__(
        self,
        model: VisionModel,
        *,
        epochs: int = 100,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.model = model
        # the recipe reaches the logger once, as the job's `train` settings (vvm.loggers.logger.log_config), not again flat
        self.save_hyperparameters(ignore=["model"], logger=False)
        self._compiled: Any = None  # torch.compile(model), kept out of the module tree (state_dict unchanged)
        self._channels_last = False

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ------------------------------------------------------------------ speed options around the fit
    def setup(self, stage: str) -> None:
        # before the strategy moves the model and wraps it in DDP (whose gradient buckets take the parameters'
        # memory layout as it is then)
        if stage != "fit":
            return
        self._channels_last = resolve_auto(self.hparams.channels_last, self.trainer.strategy.root_device)
        if self._channels_last:
            set_memory_format(self.model, torch.channels_last)
        if self.hparams.compile and self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def on_fit_end(self) -> None:
        if self._channels_last:
            set_memory_format(self.model, torch.contiguous_format)
            self._channels_last = False
        object.__setattr__(self, "_compiled", None)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self._compiled if (stage == "train" and self._compiled is not None) else self.model
        logits = net(x)
        if stage == "train":
            n: int | Tensor = int(y.shape[0])
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(dim=-1) == y).float().mean()
        else:
            # a masked padding batch of a DDP evaluation pass (every label IGNORE_LABEL, see vvm.data.batches)
            # weighs 0: every rank still logs every key (the epoch-end sync needs them all), and it counts
            # nowhere. The weight stays on the device (a host decision would wait for the GPU every batch), in
            # float32: Lightning's DDP mean of an integer batch-size sum truncates (9 examples over 2 ranks
            # counted as 8). Any other label outside [0, classes) is cross-entropy's error, as in training
            valid = y != IGNORE_LABEL
            n = valid.sum(dtype=torch.float32)
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE_LABEL, reduction="sum") / n.clamp_min(1)
            acc = ((logits.argmax(dim=-1) == y) & valid).sum() / n.clamp_min(1)
        if stage == "train":
            # the step loss goes to the logger only: a progress-bar value would sync the GPU every step
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
            self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        else:
            self.log(
                f"{stage}/loss",
                loss,
                on_step=False,
                on_epoch=True,
                prog_bar=stage != "test",
                sync_dist=True,
                batch_size=n,
            )
        self.log(
            f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n
        )
        return loss

    # per-epoch values carry `epoch` = the number of completed training epochs (1-based, as cka_epochs/epoch_N/
    # and the CKA passes during training): Lightning's own `epoch` would be the 0-based index of the epoch
    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.log("epoch", float(self.current_epoch + 1))

    def on_train_epoch_end(self) -> None:
        self.log("epoch", float(self.current_epoch + 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, hp.epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
