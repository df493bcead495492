"""Precise BatchNorm statistics after training (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

BatchNorm's running mean and variance are exponential averages (momentum 0.1) of batch statistics taken while
the weights were changing. After 100 epochs of a cosine schedule they have caught up with the final weights;
after a short training (a few epochs on digits: a few dozen steps at lr 0.1) they have not, and the model in
eval mode is far worse than in train mode (docs/benchmarks.md has the numbers). So after the fit, with the
final weights frozen, the statistics are re-estimated as the plain average over ``images`` training images
(``momentum=None``), in train mode without gradients; under DDP each rank averages its own share and the
ranks' averages are averaged. The weights are untouched; only the BatchNorm buffers change.
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from torch import nn

log = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches, max_images: int, device: torch.device | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the average over the batches of
    ``batches`` (an iterable of ``(x, y)``) until ``max_images`` images were seen: torch's
    ``torch.optim.swa_utils.update_bn`` (cumulative averages, training mode restored) over the capped images.
    Returns the number seen."""
    from torch.optim.swa_utils import update_bn

    if not batchnorms(model) or max_images <= 0:
        return 0
    seen = 0

    def images():
        nonlocal seen
        for x, _y in batches:
            x = x[: max_images - seen]
            seen += len(x)
            yield x
            if seen >= max_images:
                return

    update_bn(images(), model, device=device)
    return seen


class PreciseBN(pl.Callback):
    """Re-estimate the BatchNorm statistics of ``pl_module.model`` from ``images`` training images (this rank's
    training loader; averaged over ranks) before every validation of the fit, so that the validation accuracy
    (progress bar, logger) describes the weights as they are, not running averages that lag them; and, once the
    last epoch's steps are done, for good (before that epoch's validation, or at the end of the fit when no
    validation runs). Costs one forward pass without gradients over ``images`` images per validation; the
    weights are untouched. List it before the CKA callback, whose hooks must not see these forward passes."""

    def __init__(self, images: int) -> None:
        super().__init__()
        self.images = int(images)
        self.done = False

    def _last_epoch_done(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.max_epochs is not None
            and trainer.current_epoch == trainer.max_epochs - 1
            and bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        if self._last_epoch_done(trainer):
            self.recompute(trainer, pl_module)
        elif not self.done:
            self.estimate(trainer, pl_module, final=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recompute(trainer, pl_module)

    def recompute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final estimate (once)."""
        if self.done:
            return
        self.done = True
        self.estimate(trainer, pl_module, final=True)

    def estimate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, final: bool) -> None:
        model = pl_module.model
        bns = batchnorms(model)
        loader = trainer.train_dataloader
        if not bns or self.images <= 0 or loader is None:
            return
        per_rank = math.ceil(self.images / trainer.world_size)
        with trainer.precision_plugin.forward_context():  # the fit's autocast, if any
            seen = recompute_bn_stats(model, loader, per_rank, device=pl_module.device)
        if trainer.world_size > 1:
            for bn in bns:
                bn.running_mean.copy_(trainer.strategy.reduce(bn.running_mean.clone(), reduce_op="mean"))
                bn.running_var.copy_(trainer.strategy.reduce(bn.running_var.clone(), reduce_op="mean"))
        (log.info if final else log.debug)(
            "precise BatchNorm%s: statistics of %d layers re-estimated from %d training images%s",
            "" if final else " (for validation)",
            len(bns),
            seen,
            f" per rank x {trainer.world_size}" if trainer.world_size > 1 else "",
        )


__all__ = ["PreciseBN", "batchnorms", "recompute_bn_stats"]
