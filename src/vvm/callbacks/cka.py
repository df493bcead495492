"""SimilarityCallback (``CKACallback`` until issue 26, still importable for one release): the similarity pass
(StreamingSimilarity: CKA, and any other measure of ``measures``) inside a Lightning run.

- after training (``trainer.test``): every measure over the evaluation split, in one pass, written as
  cka.npz / cka.png / cka.pdf (and rsa.*, knn.* for ``measures=[cka,rsa,knn]``) in the run directory and logged
  to the active logger;
- with ``every_n_epochs=k > 0``: also over the fixed probe subset (the validation loader) every k epochs,
  written under ``cka_epochs/epoch_XXXX/`` and logged at that step, so the logger's step slider shows the
  representations forming.

Batches come from the datamodule's evaluation loaders (:mod:`vvm.data.batches`): a seeded random permutation
in balanced batches, whole batches per rank; the callback tells the metric each batch's global id and whether
it is padding. Under DDP ``compute()`` sums the HSIC states over ranks and rank 0 writes. The compare model runs
inside the first model's forward pass (a pre-hook), so both run under the same autocast/precision context.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vvm.cka import CKAResult, MeasureResult, StreamingSimilarity
from vvm.cka.kernels import kernel_params as kernel_params_of
from vvm.cka.kernels import unexpected
from vvm.cka.precision import check_tf32, float32_precision, pass_float32
from vvm.data.batches import EvalBatches
from vvm.io import save_result, write_rdms
from vvm.plots.heatmap import measures_figure, save_figure
from vvm.plots.measure import chance_reference, measure_figure
from vvm.plots.style import caption, result_quantity
from vvm.settings import SimilaritySettings


def write_measure_outputs(
    name: str,
    res: CKAResult | MeasureResult,
    out_dir: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    extra: dict[str, Any] | None = None,
    colour_range: str = "fixed",
) -> dict[str, Path]:
    """``<name>.npz`` (:meth:`~vvm.cka.result.MatrixResult.arrays`: cka.npz holds ``cka``, ``cka_stderr``, the
    HSICs...; the other measures ``matrix``, ``stderr``, their parameters...), ``<name>.png`` and
    ``<name>.pdf``: the map with its quantity on the colour bar, the sample in the caption and each entry's 95%
    interval half-width beside it."""
    npz = save_result(Path(out_dir) / f"{name}.npz", res, **(extra or {}))
    figures = draw_measure(
        name, res, out_dir, title=title, xlabel=xlabel, ylabel=ylabel, colour_range=colour_range
    )
    return {"npz": npz, **figures}


def draw_measure(
    name: str,
    res: CKAResult | MeasureResult,
    out_dir: str | Path,
    *,
    title: str | None,
    xlabel: str,
    ylabel: str,
    colour_range: str = "fixed",
) -> dict[str, Path]:
    """``<name>.png`` and ``<name>.pdf``: the heatmap of a measure's matrix (:func:`measure_figure`)."""
    fig = measure_figure(res, title=title, xlabel=xlabel, ylabel=ylabel, colour_range=colour_range)
    png, pdf = save_figure(fig, Path(out_dir) / name)
    return {"png": png, "pdf": pdf}


def epoch_number(trainer: pl.Trainer) -> int:
    """The epoch a pass during training belongs to: N after N completed training epochs (1-based), the number
    of its folder ``cka_epochs/epoch_000N``, its figure's title and its W&B ``epoch``."""
    return trainer.current_epoch + 1


def _eval_batches(loaders: Any) -> EvalBatches | None:
    """The batch plan behind an evaluation loader (None for loaders vvm did not make)."""
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    ds = getattr(loader, "dataset", None)
    return ds if isinstance(ds, EvalBatches) else None


class SimilarityCallback(pl.Callback):
    """The similarity pass of a Lightning run (see the module docstring). ``layers`` and the engine options
    (``kernel``, ``kernel_params``, ``estimator``, ``precision``) are those of :class:`vvm.cka.StreamingSimilarity`;
    :meth:`from_settings` takes them from the job's settings. ``measures`` (default ``["cka"]``), ``params`` and
    ``titles`` (per measure; else ``title``): the measures of the pass."""

    @classmethod
    def from_settings(
        cls, settings: SimilaritySettings, output_dir: str | Path, *, engine: dict[str, Any], **job: Any
    ) -> SimilarityCallback:
        """The callback ``similarity.*`` describes, with the engine's options ``engine``
        (``JobSettings.engine_options()``: ``cka.*``, ``kernel.<kernel>.*``); ``job``: what only the job knows
        (``title``, ``model_label``, the second model ``other`` and its ``other_label``, the measures)."""
        return cls(
            output_dir,
            layers=settings.layer_spec(),
            other_layers=settings.layer_spec(other=True) if settings.other_layers is not None else None,
            every_n_epochs=settings.every_n_epochs,
            tf32=settings.tf32.value,
            colour_range=settings.colour_range.value,
            **engine,
            **job,
        )

    def __init__(
        self,
        output_dir: str | Path,
        *,
        layers: Any = "blocks",
        kernel: str = "linear",
        kernel_params: dict[str, Any] | None = None,
        estimator: str = "unbiased",
        precision: str = "exact",
        every_n_epochs: int = 0,
        title: str | None = None,
        model_label: str = "layer",
        other: Any = None,
        other_layers: Any = None,
        other_label: str | None = None,
        tf32: str = "allow",
        measures: Any = ("cka",),
        params: dict[str, dict[str, Any]] | None = None,
        titles: dict[str, str] | None = None,
        colour_range: str = "fixed",
        **deprecated: Any,
    ) -> None:
        super().__init__()
        self.colour_range = colour_range
        self.measures = [str(m) for m in measures]
        self.params = {k: dict(v) for k, v in (params or {}).items() if k in self.measures}
        self.titles = dict(titles or {})
        check_tf32(tf32)
        # the pass's own convolutions and matmuls (similarity.tf32): allow = PyTorch's settings, off = IEEE float32
        self.tf32 = tf32
        self._float32: dict[str, str] = {}
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
        kernel_params = kernel_params_of(kernel, kernel_params, deprecated)  # rbf_frac=...: one more release
        unexpected(deprecated)
        self.options = dict(
            kernel=kernel, kernel_params=kernel_params, estimator=estimator, precision=precision
        )
        self.every_n_epochs = int(every_n_epochs or 0)
        self.title = title
        self.model_label = model_label
        self.results: list[
            dict[str, Any]
        ] = []  # one entry per CKA pass: stage, epoch, result, paths, seconds
        self._metric: StreamingSimilarity | None = None
        self._pass: contextlib.ExitStack | None = None
        self._batches: EvalBatches | None = None
        self._t0 = 0.0

    # ------------------------------------------------------------------ passes
    def _start(self, pl_module: pl.LightningModule, loaders: Any) -> None:
        net = pl_module.model.net
        other_net = None
        if self.other is not None:
            self.other.to(pl_module.device).eval()
            other_net = self.other.net
        self._batches = _eval_batches(loaders)
        max_batches = len(self._batches.plan) if self._batches is not None else None
        self._metric = StreamingSimilarity(
            net,
            self.layers,
            measures=self.measures,
            params=self.params,
            other=other_net,
            other_layers=self.other_layers,
            max_batches=max_batches,
            plan=self._batches.layout if self._batches is not None else None,
            **self.options,
        ).to(pl_module.device)
        self._pass = contextlib.ExitStack()
        self._pass.enter_context(pass_float32(self.tf32))  # restored when the pass closes
        self._float32 = {"device": pl_module.device.type, **float32_precision(pl_module.device.type)}
        self._pass.enter_context(self._metric.track())
        if self.other is not None:
            # the compare model sees the batch inside the first model's forward: same autocast context
            handle = pl_module.model.register_forward_pre_hook(self._run_other)
            self._pass.callback(handle.remove)
        self._t0 = time.perf_counter()

    def _stop(self) -> None:
        if self._pass is not None:
            self._pass.close()
            self._pass = None

    def _finish(self, trainer: pl.Trainer, stage: str, out_dir: Path) -> CKAResult | None:
        self._stop()
        assert self._metric is not None
        results = self._metric.compute()
        seconds = time.perf_counter() - self._t0
        entry: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch_number(trainer) if stage == "probe" else None,  # N after N training epochs
            "result": results.get("cka"),
            "results": results,
            "seconds": seconds,
            "float32": {"tf32": self.tf32, **self._float32},
        }
        if trainer.is_global_zero:
            # every result file before any figure: a full disk or a file-size limit costs a figure, not a result
            npz = {
                name: save_result(out_dir / f"{name}.npz", res, **self._npz_extra(name, res))
                for name, res in results.items()
            }
            rdms = None
            if "rsa" in results:
                pools = self._batches.pools() if self._batches is not None else None
                rdms = write_rdms(
                    out_dir / "rdms.npz",
                    self._metric.measures["rsa"],
                    results["rsa"],
                    pools[0] if pools else None,
                )
            paths = {
                name: {"npz": npz[name], **self._write(name, res, trainer, stage, out_dir)}
                for name, res in results.items()
            }
            if rdms is not None:
                paths["rsa"]["rdms"] = rdms
            entry["measure_paths"] = paths
            if "cka" in paths:
                entry["paths"] = paths["cka"]
            for name, res in results.items():
                self._log(trainer, res, stage, paths[name], measure=name)
            if len(results) > 1:  # the measures side by side: measures.png / measures.pdf
                side = self._write_side_by_side(results, stage, trainer, out_dir)
                entry["measure_paths"]["side_by_side"] = side
                self._log_side_by_side(trainer, stage, side["png"])
        self.results.append(entry)
        self._metric = None
        return entry["result"]

    def _write(self, name: str, res: Any, trainer: pl.Trainer, stage: str, out_dir: Path) -> dict[str, Path]:
        """The figures of measure ``name`` (its .npz is written before any figure)."""
        title = self.titles.get(name, self.title)
        label = f"{title} ({stage}, epoch {epoch_number(trainer)})" if stage == "probe" else title
        note = res.note() if hasattr(res, "note") else ""
        label = f"{label}\n{note}" if note and label else label
        return draw_measure(
            name,
            res,
            out_dir,
            title=label,
            xlabel=self.other_label,
            ylabel=self.model_label,
            colour_range=self.colour_range,
        )

    def _npz_extra(self, name: str, res: Any) -> dict[str, Any]:
        """What a measure's npz holds beside its result: the layer names, what a comparison must share
        (``comparable``) and, for a pooled measure, the fingerprint of its pools."""
        assert self._metric is not None
        measure = self._metric.measures[name]
        extra = {**self._names(), "comparable": json.dumps(measure.comparable(getattr(res, "facts", None)))}
        if measure.pooled and self._batches is not None:  # pooled measures pair by their pools
            extra["batch_fingerprint"] = self._batches.pool_fingerprint()
        return extra

    def _write_side_by_side(
        self, results: dict[str, Any], stage: str, trainer: pl.Trainer, out_dir: Path
    ) -> dict[str, Path]:
        panels = [
            (result_quantity(res), res.matrix.numpy(), res.layers_x, res.layers_y) for res in results.values()
        ]
        what = self.title.rsplit(" - ", 1)[0]  # the job's title without its measure ("r18 (random, digits)")
        label = f"{what} ({stage}, epoch {epoch_number(trainer)})" if stage == "probe" else what
        first = next(iter(results.values()))
        fig = measures_figure(
            panels,
            title=label,
            xlabel=self.other_label,
            ylabel=self.model_label,
            caption=caption(first.n_samples, first.n_batches, "standard errors: each measure's own figure"),
            colour_range=self.colour_range,
            references=[chance_reference(r) for r in results.values()],
        )
        png, pdf = save_figure(fig, Path(out_dir) / "measures")
        return {"png": png, "pdf": pdf}

    def _log_side_by_side(self, trainer: pl.Trainer, stage: str, png: Path) -> None:
        from vvm.loggers.logger import is_wandb

        key = "measures/side_by_side" if stage == "final" else f"measures_{stage}/side_by_side"
        for logger in trainer.loggers:
            if is_wandb(logger):
                logger.log_image(key, images=[str(png)], step=trainer.global_step)

    def _log(
        self, trainer: pl.Trainer, res: Any, stage: str, paths: dict[str, Path], measure: str = "cka"
    ) -> None:
        from vvm.loggers.logger import log_measure

        for logger in trainer.loggers:
            epoch = epoch_number(trainer) if stage == "probe" else None
            log_measure(
                logger,
                res,
                measure=measure,
                stage=stage,
                image=paths["png"],
                step=trainer.global_step,
                epoch=epoch,
            )

    def _names(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_x": self.model_label, "model_y": self.other_label, "tf32": self.tf32}
        # what the pass's float32 convolutions and matmuls ran in (ieee | tf32), on which device
        out.update({f"float32_{k}": v for k, v in self._float32.items()})
        if self._batches is not None:
            out["batch_fingerprint"] = self._batches.fingerprint()
        return out

    def _run_other(self, module: Any, args: tuple) -> None:
        """Feed the batch's images to the second model, from inside the first model's forward call."""
        with torch.no_grad():
            self.other(args[0])

    def _before_batch(self, batch_idx: int) -> None:
        """Tell the metric which batch of the plan comes next, and whether it is padding."""
        if self._metric is None or self._batches is None:
            return
        self._metric.begin_batch(batch_idx, self._batches)

    @property
    def final(self) -> dict[str, Any] | None:
        finals = [r for r in self.results if r["stage"] == "final"]
        return finals[-1] if finals else None

    # ------------------------------------------------------------------ evaluation pass
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module, trainer.test_dataloaders)

    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._before_batch(batch_idx)

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._pass is not None:
            self._before_batch(batch_idx)

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
            self._start(pl_module, trainer.val_dataloaders)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pass is not None:
            out = self.output_dir / "cka_epochs" / f"epoch_{epoch_number(trainer):04d}"
            self._finish(trainer, "probe", out)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop()

    def state_dict(self) -> dict[str, Any]:
        return {}


# the name it had while CKA was the pass's only measure: kept for one release
CKACallback = SimilarityCallback

__all__ = ["CKACallback", "SimilarityCallback", "epoch_number", "measure_figure", "write_measure_outputs"]
