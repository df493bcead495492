"""The figure of one measure's result: its heatmap with the quantity on the colour bar, the sample in the
caption, each entry's interval half-width beside it and the measure's chance level where it has one."""

from __future__ import annotations

from typing import Any

from vvm.cka import CKAResult, MeasureResult
from vvm.plots.heatmap import Uncertainty, heatmap_figure
from vvm.plots.style import caption, chance_level, result_quantity


def chance_reference(res: CKAResult | MeasureResult) -> tuple[float | None, str]:
    """The chance level of a measure that has one (mutual kNN: k/(n-1)), for its colour bar."""
    if isinstance(res, CKAResult):
        return None, ""
    facts = {**res.params, **getattr(res, "facts", {})}  # a declared chance level, where the result has one
    return chance_level(res.measure, facts, res.n_samples, res.n_batches), "chance k/(n−1)"


def measure_figure(
    res: CKAResult | MeasureResult,
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    colour_range: str = "fixed",
    level: float = 0.95,
) -> Any:
    """The heatmap of one result: its quantity (CKA with kernel and estimator), n and batches in the caption,
    the half-width of each entry's ``level`` t interval (:meth:`~vvm.cka.result.MatrixResult.interval`)."""
    lo, hi = res.interval(level)
    fig = heatmap_figure(
        res.matrix.numpy(),
        res.layers_x,
        res.layers_y,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        cbar_label=result_quantity(res),
        caption=caption(res.n_samples, res.n_batches),
        uncertainty=Uncertainty(
            ((hi - lo) / 2).numpy(), f"{level:.0%} interval half-width (t, batches − 1 df)"
        ),
        colour_range=colour_range,
        reference=chance_reference(res),
    )
    return fig


__all__ = ["chance_reference", "measure_figure"]
