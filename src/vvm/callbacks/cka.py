"""CKACallback: StreamingCKA inside a Lightning run.

- after training (``trainer.test``): CKA over the evaluation split, written as cka.npz / cka.png / cka.pdf in
  the run directory and logged to the active logger;
- with ``every_n_epochs=k > 0``: also over the fixed probe subset (the validation loader) every k epochs,
  written under ``cka_epochs/epoch_XXXX/`` and logged at that step, so the logger's step slider shows the
  representations forming.

Under DDP every rank feeds its own batches; ``compute()`` sums the HSIC states over ranks and rank 0 writes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from vvm.cka import CKAResult, StreamingCKA
from vvm.io import save_result
from vvm.plots.heatmap import heatmap_figure, save_figure


def mean_offdiagonal(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries that are defined (NaN when none is)."""
    m = np.asarray(matrix, dtype=float)
    mask = ~np.eye(*m.shape, dtype=bool) if m.shape[0] == m.shape[1] else np.ones(m.shape, dtype=bool)
    vals = m[mask & ~np.isnan(m)]
    return float(vals.mean()) if vals.size else math.nan


def write_cka_outputs(
    res: CKAResult,
    out_dir: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """cka.npz (``cka``, ``cka_stderr``, ``layers_x``, ``layers_y``, ``n_samples``, ...), cka.png and cka.pdf."""
    out_dir = Path(out_dir)
    npz = save_result(out_dir / "cka.npz", res, **(extra or {}))
    fig = heatmap_figure(
        res.matrix.numpy(), res.layers_x, res.layers_y, title=title, xlabel=xlabel, ylabel=ylabel
    )
    png, pdf = save_figure(fig, out_dir / "cka")
    return {"npz": npz, "png": png, "pdf": pdf}


class CKACallback(pl.Callback):
    def __init__(
        self,
        output_dir: str | Path,
        *,
        layers: Any = "blocks",
        kernel: str = "linear",
        estimator: str = "unbiased",
        precision: str = "exact",
        rbf_frac: float = 1.0,
        every_n_epochs: int = 0,
        title: str | None = None,
        model_label: str = "layer",
        other: Any = None,
        other_layers: Any = None,
        other_label: str | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.layers = list(layers) if not isinstance(layers, str) else layers
        # cross-model CKA: a second VisionModel that sees every batch the module sees (run by this callback)
        self.other = other
        self.other_layers = (
            list(other_layers)
            if other_layers is not None and not isinstance(other_layers, str)
            else other_layers
        )
        self.other_label = other_label or model_label
        self.options = dict(kernel=kernel, estimator=estimator, precision=precision, rbf_frac=rbf_frac)
        self.every_n_epochs = int(every_n_epochs or 0)
        self.title = title
        self.model_label = model_label
        self.results: list[
            dict[str, Any]
        ] = []  # one entry per CKA pass: stage, epoch, result, paths, seconds
        self._metric: StreamingCKA | None = None
        self._tracking = None
        self._t0 = 0.0

    # ------------------------------------------------------------------ passes
    def _start(self, pl_module: pl.LightningModule) -> None:
        net = pl_module.model.net
        other_net = None
        if self.other is not None:
            self.other.to(pl_module.device).eval()
            other_net = self.other.net
        self._metric = StreamingCKA(
            net, self.layers, other=other_net, other_layers=self.other_layers, **self.options
        ).to(pl_module.device)
        self._tracking = self._metric.track()
        self._tracking.__enter__()
        self._t0 = time.perf_counter()

    def _stop(self) -> None:
        if self._tracking is not None:
            self._tracking.__exit__(None, None, None)
            self._tracking = None

    def _finish(self, trainer: pl.Trainer, stage: str, out_dir: Path) -> CKAResult:
        self._stop()
        assert self._metric is not None
        res = self._metric.compute()
        seconds = time.perf_counter() - self._t0
        entry: dict[str, Any] = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "result": res,
            "seconds": seconds,
        }
        if trainer.is_global_zero:
            label = (
                f"{self.title} ({stage}, epoch {trainer.current_epoch})" if stage == "probe" else self.title
            )
            entry["paths"] = write_cka_outputs(
                res,
                out_dir,
                title=label,
                xlabel=self.other_label,
                ylabel=self.model_label,
                extra=self._names(),
            )
            self._log(trainer, res, stage, entry["paths"])
        self.results.append(entry)
        self._metric = None
        return res

    def _log(self, trainer: pl.Trainer, res: CKAResult, stage: str, paths: dict[str, Path]) -> None:
        from vvm.loggers import log_cka

        for logger in trainer.loggers:
            epoch = trainer.current_epoch + 1 if stage == "probe" else None
            log_cka(logger, res, stage=stage, image=paths["png"], step=trainer.global_step, epoch=epoch)

    def _names(self) -> dict[str, str]:
        return {"model_x": self.model_label, "model_y": self.other_label}

    def _run_other(self, pl_module: pl.LightningModule, batch: Any) -> None:
        """Feed the batch's images to the second model (the first one runs in the module's step)."""
        if self.other is None or self._tracking is None:
            return
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.no_grad():
            self.other(x.to(pl_module.device))

    @property
    def final(self) -> dict[str, Any] | None:
        finals = [r for r in self.results if r["stage"] == "final"]
        return finals[-1] if finals else None

    # ------------------------------------------------------------------ evaluation pass
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._run_other(pl_module, batch)

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._run_other(pl_module, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, "final", self.output_dir)

    # ------------------------------------------------------------------ during training
    def _probe_due(self, trainer: pl.Trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and not trainer.sanity_checking
            and trainer.state.fn == "fit"
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._probe_due(trainer):
            self._start(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tracking is not None:
            out = self.output_dir / "cka_epochs" / f"epoch_{trainer.current_epoch + 1:04d}"
            self._finish(trainer, "probe", out)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop()

    def state_dict(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def summary(res: CKAResult) -> dict[str, float]:
        m = res.matrix.numpy()
        return {"cka_mean_offdiag": mean_offdiagonal(m), "cka_n_samples": float(res.n_samples)}


__all__ = ["CKACallback", "mean_offdiagonal", "write_cka_outputs"]
