"""The multirun summary grid: every job's CKA heatmap, one row per model family, one shared colour scale.

Rows are families (resnet, lambda, vit, ...), and inside a row each model's inits sit side by side
(``r18 · pretrained``, ``r18 · random``, ``r34 · pretrained`` ...), as in the term project's figures. Every panel uses
the same colour scale ([0, 1] by default, one colour bar, named by its quantity, for the whole figure); undefined entries (NaN) are grey;
a job without a matrix (failed, incomplete) gets a panel that says why.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vvm.plots.heatmap import NAN_COLOUR, draw_heatmap
from vvm.plots.style import fit_canvas

PANEL_W, PANEL_H = 2.7, 3.0  # inches per heatmap panel (title and tick labels included)


@dataclass
class Panel:
    """One job's cell in the grid: a matrix with its layer names, or a note saying why there is none."""

    title: str
    matrix: np.ndarray | None = None
    layers_x: Sequence[str] = ()
    layers_y: Sequence[str] = ()
    subtitle: str | None = None  # a second, smaller title line (mean CKA, accuracy)
    note: str | None = None  # shown instead of a heatmap (e.g. "failed: ValueError: ...")


def summary_figure(
    rows: Sequence[tuple[str, Sequence[Panel]]],
    *,
    title: str | None = None,
    cbar_label: str,
    caption: str | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "magma",
    max_ticks: int = 8,
) -> Figure:
    """A grid with one row per ``(label, panels)`` and a single colour bar for all panels, named
    ``cbar_label`` (the quantity and its estimator); ``caption`` (the sample) below."""
    rows = [(label, list(panels)) for label, panels in rows if panels]
    if not rows:
        raise ValueError("summary_figure needs at least one panel")
    nrows, ncols = len(rows), max(len(p) for _, p in rows)
    width = max(PANEL_W * ncols + 1.2, 7.0)  # room for the title when the grid is narrow
    fig = Figure(figsize=(width, PANEL_H * nrows + (0.6 if title else 0.2)), layout="constrained")
    gs = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1.0] * ncols + [0.06])
    any_nan = False
    for r, (label, panels) in enumerate(rows):
        for c in range(ncols):
            ax = fig.add_subplot(gs[r, c])
            if c >= len(panels):
                ax.set_visible(False)
                continue
            any_nan |= _draw_panel(ax, panels[c], vmin=vmin, vmax=vmax, cmap=cmap, max_ticks=max_ticks)
            if c == 0:
                ax.set_ylabel(label, fontsize=12, fontweight="bold")
    cax = fig.add_subplot(gs[:, ncols])
    cb = fig.colorbar(ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap), cax=cax)
    cb.set_label(cbar_label + ("\n(grey: undefined)" if any_nan else ""))
    cax.set_facecolor(NAN_COLOUR)
    if title:
        fig.suptitle(title, fontsize=12)
    if caption:
        fig.supxlabel(caption, fontsize=8)
    return fit_canvas(fig)


def _draw_panel(ax: Axes, p: Panel, *, vmin: float, vmax: float, cmap: str, max_ticks: int) -> bool:
    """One panel: the heatmap, or the note (an error) on grey; returns whether the heatmap has NaNs."""
    head = p.title if not p.subtitle else f"{p.title}\n{p.subtitle}"
    if p.matrix is not None and p.note is None:
        m = np.asarray(p.matrix, dtype=float)
        draw_heatmap(
            ax, m, p.layers_x, p.layers_y, vmin=vmin, vmax=vmax, cmap=cmap, cbar=False, max_ticks=max_ticks
        )
        ax.tick_params(labelsize=5, length=2)
        ax.set_title(head, fontsize=8)
        return bool(np.isnan(m).any())
    ax.set_facecolor("#f4f4f4")
    ax.set_box_aspect(1)  # the size of a heatmap panel
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(
        0.5,
        0.5,
        textwrap.fill(p.note or "no result", 34, max_lines=8, placeholder=" ..."),
        ha="center",
        va="center",
        fontsize=6.5,
        color="#b2182b",
        transform=ax.transAxes,
        wrap=True,
    )
    ax.set_title(head, fontsize=8)
    return False
