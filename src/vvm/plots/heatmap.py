"""Similarity heatmaps (CKA, RSA, kNN): layer names on the axes, colour scale fixed to [0, 1], undefined (NaN) entries grey."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vvm.io import atomic_path

NAN_COLOUR = "#bdbdbd"


def _tick_labels(names: Sequence[str], max_ticks: int) -> tuple[list[int], list[str]]:
    step = max(1, int(np.ceil(len(names) / max_ticks)))
    idx = list(range(0, len(names), step))
    return idx, [names[i] for i in idx]


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
    max_ticks: int = 40,
    show_ticks: bool = True,
) -> Axes:
    """Rows are ``layers_x`` (first layer at the bottom, as in Kornblith et al.), columns ``layers_y``."""
    m = np.asarray(matrix, dtype=float)
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
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return ax


def heatmap_figure(
    matrix: np.ndarray,
    layers_x: Sequence[str],
    layers_y: Sequence[str],
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "magma",
) -> Figure:
    n = max(len(layers_x), len(layers_y))
    size = float(np.clip(3.5 + 0.12 * n, 5.0, 14.0))
    ratio = len(layers_x) / max(len(layers_y), 1)
    fig = Figure(figsize=(size + 1.2, float(np.clip(size * ratio, 4.0, 14.0))), layout="constrained")
    ax = fig.subplots()
    draw_heatmap(
        ax,
        matrix,
        layers_x,
        layers_y,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
    )
    if np.isnan(np.asarray(matrix, dtype=float)).any():
        ax.text(
            1.0,
            -0.02,
            "grey: undefined (constant layer)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
    return fig


def measures_figure(
    panels: Sequence[tuple[str, np.ndarray, Sequence[str], Sequence[str]]],
    *,
    title: str | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
) -> Figure:
    """Several measures of one pass side by side: ``panels`` of ``(title, matrix, layers_x, layers_y)``, one
    colour scale [0, 1] (a negative RSA correlation shows as 0), undefined entries grey."""
    n = max(max(len(p[2]), len(p[3])) for p in panels)
    size = float(np.clip(3.0 + 0.1 * n, 4.0, 9.0))
    fig = Figure(figsize=(size * len(panels) + 1.0, size + 0.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, (name, matrix, lx, ly)) in enumerate(zip(axes, panels)):
        last = i == len(panels) - 1
        draw_heatmap(
            ax, matrix, lx, ly, title=name, xlabel=xlabel, ylabel=ylabel if i == 0 else None, cbar=last,
            show_ticks=True,
        )  # fmt: skip
        if i:
            ax.set_yticklabels([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_figure(
    fig: Figure, path_stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically. Figures are ``matplotlib.figure.Figure`` objects
    made without pyplot, so no backend is chosen and no global figure state kept (nothing to close)."""
    out = []
    stem = Path(path_stem)
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        out.append(path)
    return out
