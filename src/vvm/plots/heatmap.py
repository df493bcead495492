"""Similarity heatmaps (CKA, RSA, kNN): layer names on the axes (first layer at the bottom), a colour bar that
names its quantity and estimator, a caption line with the sample, an uncertainty panel (the 95% interval's
half-width), stage boundaries on long layer lists; undefined (NaN) entries grey."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vvm.io import atomic_path
from vvm.plots.style import REFERENCE, colour_limits, fit_canvas, stages

NAN_COLOUR = "#bdbdbd"
STAGE_COLOUR = "#6f6f6f"  # lines between stages: visible on the light and the dark end of magma
MAX_TICKS = 64  # every layer named up to this many (term_project, all of r18); every k-th beyond


def _tick_labels(names: Sequence[str], max_ticks: int) -> tuple[list[int], list[str]]:
    step = max(1, int(np.ceil(len(names) / max_ticks)))
    idx = list(range(0, len(names), step))
    return idx, [names[i] for i in idx]


def draw_stage_bounds(ax: Axes, layers_x: Sequence[str], layers_y: Sequence[str]) -> None:
    """Thin grey lines between the stages of long layer lists (``similarity.layers=all``: r18's ``layer1``...)."""
    for names, line in ((layers_x, ax.axhline), (layers_y, ax.axvline)):
        for _, start, _ in stages(names)[1:]:
            line(start, color=STAGE_COLOUR, lw=0.7)


def draw_heatmap(
    ax: Axes,
    matrix: np.ndarray,
    layers_x: Sequence[str],
    layers_y: Sequence[str],
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "magma",
    cbar: bool = True,
    cbar_ax: Axes | None = None,
    cbar_label: str | None = None,
    max_ticks: int = 40,
    show_ticks: bool = True,
) -> Axes:
    """Rows are ``layers_x`` (first layer at the bottom, as in Kornblith et al.), columns ``layers_y``; the colour
    bar (``cbar``) is labelled ``cbar_label`` and shows a triangle where values lie beyond the scale."""
    m = np.asarray(matrix, dtype=float)
    finite = m[np.isfinite(m)]
    below, above = bool(finite.size and finite.min() < vmin), bool(finite.size and finite.max() > vmax)
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get((below, above), "neither")
    ax.set_facecolor(NAN_COLOUR)
    sns.heatmap(
        m,
        ax=ax,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        mask=np.isnan(m),
        square=m.shape[0] == m.shape[1],
        cbar=cbar,
        cbar_ax=cbar_ax,
        cbar_kws={"extend": extend, "label": cbar_label or ""},
        xticklabels=False,
        yticklabels=False,
        linewidths=0,
    )
    ax.invert_yaxis()
    if show_ticks:
        xi, xl = _tick_labels(list(layers_y), max_ticks)
        yi, yl = _tick_labels(list(layers_x), max_ticks)
        fs = max(4, min(8, int(320 / max(len(xl), len(yl), 1))))
        ax.set_xticks(np.array(xi) + 0.5)
        ax.set_xticklabels(xl, rotation=90, fontsize=fs)
        ax.set_yticks(np.array(yi) + 0.5)
        ax.set_yticklabels(yl, rotation=0, fontsize=fs)
        draw_stage_bounds(ax, layers_x, layers_y)
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return ax


def colour_bar(ax: Axes):
    """The colour bar seaborn drew for ``ax`` (its mappable's)."""
    return ax.collections[0].colorbar


def mark_reference(ax: Axes, value: float | None, label: str) -> None:
    """A dotted line on the colour bar of ``ax`` at ``value`` (e.g. kNN's chance level), named in its label."""
    if value is None or not np.isfinite(value):
        return
    cb = colour_bar(ax)
    cb.ax.axhline(value, color="white", ls=REFERENCE["ls"], lw=1.5)
    cb.set_label(f"{cb.ax.get_ylabel()}\ndotted: {label} = {value:.3g}")


@dataclass
class Uncertainty:
    """The half-width of each entry's confidence interval (``t · stderr``) and how it was made."""

    halfwidth: np.ndarray
    label: str = "95% interval half-width (± t·SE over batches)"


def draw_uncertainty(
    ax: Axes,
    uncertainty: Uncertainty,
    layers_x: Sequence[str],
    layers_y: Sequence[str],
    *,
    xlabel: str,
    max_ticks: int,
) -> None:
    """The side panel of :func:`heatmap_figure`: each entry's interval half-width, white = certain."""
    hw = np.asarray(uncertainty.halfwidth, dtype=float)
    top = float(np.nanmax(hw)) or 1e-3
    n = max(len(layers_x), len(layers_y))
    draw_heatmap(
        ax,
        hw,
        layers_x,
        layers_y,
        title="uncertainty of each entry",
        xlabel=xlabel,
        vmin=0.0,
        vmax=top,
        cmap="Greys",
        cbar_label=uncertainty.label,
        max_ticks=max_ticks,
        show_ticks=n <= 20,
    )
    ax.set_yticks([])
    for spine in ax.spines.values():  # its white (certain) entries need an edge
        spine.set_visible(True)


def heatmap_figure(
    matrix: np.ndarray,
    layers_x: Sequence[str],
    layers_y: Sequence[str],
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    cbar_label: str,
    caption: str | None = None,
    uncertainty: Uncertainty | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colour_range: str = "fixed",
    cmap: str = "magma",
    reference: tuple[float | None, str] = (None, ""),
) -> Figure:
    """One map with its colour bar (``cbar_label``: the quantity and its estimator), ``caption`` below; with
    ``uncertainty``, a second, smaller panel shows each entry's interval half-width. The colour scale is
    ``vmin``/``vmax`` when given, else :func:`~vvm.plots.style.colour_limits` of ``colour_range``;
    ``reference``: a ``(value, name)`` marked on the colour bar (kNN's chance level)."""
    m = np.asarray(matrix, dtype=float)
    lo, hi = colour_limits(m, colour_range)
    vmin, vmax = lo if vmin is None else vmin, hi if vmax is None else vmax
    n = max(len(layers_x), len(layers_y))
    size = float(np.clip(3.5 + 0.12 * n, 5.0, 14.0))
    ratio = len(layers_x) / max(len(layers_y), 1)
    side = uncertainty is not None and np.isfinite(uncertainty.halfwidth).any()
    width = size + 1.6 + (0.55 * size + 1.4 if side else 0.0)
    fig = Figure(figsize=(width, float(np.clip(size * ratio, 4.0, 14.0)) + 0.5), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[1.0, 0.55]) if side else [fig.subplots()]
    max_ticks = MAX_TICKS if n <= MAX_TICKS else 40
    draw_heatmap(
        axes[0],
        m,
        layers_x,
        layers_y,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        cbar_label=cbar_label,
        max_ticks=max_ticks,
    )
    mark_reference(axes[0], *reference)
    notes = [caption] if caption else []
    if np.isnan(m).any():
        notes.append("grey: undefined (a constant layer)")
    if uncertainty is not None and not side:
        notes.append("one batch: no standard error")
    if side:
        assert uncertainty is not None
        draw_uncertainty(axes[1], uncertainty, layers_x, layers_y, xlabel=xlabel, max_ticks=max_ticks)
    if notes:
        fig.supxlabel(" · ".join(notes), fontsize=7)
    return fit_canvas(fig)


def measures_figure(
    panels: Sequence[tuple[str, np.ndarray, Sequence[str], Sequence[str]]],
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    caption: str | None = None,
    colour_range: str = "fixed",
    references: Sequence[tuple[float | None, str]] | None = None,
) -> Figure:
    """Several measures of one pass side by side: ``panels`` of ``(quantity, matrix, layers_x, layers_y)``, each
    with its own colour bar named by its quantity (a kNN map lives far below a CKA map); ``references``: per
    panel a ``(value, name)`` marked on its colour bar (kNN's chance level) or ``(None, "")``."""
    n = max(max(len(p[2]), len(p[3])) for p in panels)
    size = float(np.clip(3.0 + 0.1 * n, 4.0, 9.0))
    fig = Figure(figsize=((size + 1.3) * len(panels) + 0.6, size + 1.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    refs = list(references or [(None, "")] * len(panels))
    for i, (ax, (name, matrix, lx, ly)) in enumerate(zip(axes, panels)):
        lo, hi = colour_limits(matrix, colour_range)
        draw_heatmap(
            ax,
            matrix,
            lx,
            ly,
            title=name,
            xlabel=xlabel,
            ylabel=ylabel if i == 0 else None,
            vmin=lo,
            vmax=hi,
            cbar_label=name,
            max_ticks=MAX_TICKS if n <= MAX_TICKS else 40,
        )
        mark_reference(ax, *refs[i])
        if i:
            ax.set_yticklabels([])
    if title:
        fig.suptitle(title, fontsize=11)
    notes = [caption] if caption else []
    if any(np.isnan(np.asarray(p[1], dtype=float)).any() for p in panels):
        notes.append("grey: undefined (a constant layer)")
    if notes:
        fig.supxlabel(" · ".join(notes), fontsize=7)
    return fit_canvas(fig)


def save_figure(
    fig: Figure, path_stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically, cut to what is drawn (``bbox_inches="tight"``, so no
    text is clipped). Figures are ``matplotlib.figure.Figure`` objects made without pyplot, so no backend is
    chosen and no global figure state kept (nothing to close)."""
    out = []
    stem = Path(path_stem)
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
        out.append(path)
    return out
