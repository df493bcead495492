"""Figures of a joint CKA pass: the whole block matrix with the models' boundaries and names, and the layer
correspondence between models on a relative-depth axis (one panel per pair of model families)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vvm.cka.correspondence import best_matches
from vvm.plots.heatmap import draw_heatmap
from vvm.plots.style import RANDOM_LS, REFERENCE, fit_canvas

# line styles of the correspondence plot, by the inits of the two models (dashed = random init, as everywhere)
INIT_STYLES = {"pretrained": "-", "random": RANDOM_LS, "mixed": "-."}
MARKERS = "osD^vP*X"


def joint_figure(
    matrix: np.ndarray,
    models: Sequence[str],
    model_index: Sequence[int],
    *,
    title: str,
    cbar_label: str,
    caption: str | None = None,
) -> Figure:
    """The ΣL x ΣL matrix (first layer at the bottom left), white lines at the models' boundaries, each model's
    name beside its block on both axes, the colour bar named ``cbar_label``, ``caption`` below; layer names are
    left out (``pairs/`` has them)."""
    m = np.asarray(matrix, dtype=float)
    idx = np.asarray(model_index)
    total = len(idx)
    size = float(np.clip(4.0 + 0.05 * total + 0.6 * len(models), 6.0, 16.0))
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    draw_heatmap(ax, m, [""] * total, [""] * total, title=title, show_ticks=False, cbar_label=cbar_label)
    starts = [int(np.argmax(idx == k)) for k in range(len(models))]
    ends = [s + int((idx == k).sum()) for k, s in enumerate(starts)]
    for b in starts[1:]:
        ax.axhline(b, color="white", lw=1.2)
        ax.axvline(b, color="white", lw=1.2)
    centres = [(s + e) / 2 for s, e in zip(starts, ends)]
    fs = max(5, min(10, int(300 / max(len(models), 1) / max(max(len(s) for s in models), 1) * 2)))
    ax.set_xticks(centres)
    ax.set_xticklabels(models, rotation=90, fontsize=fs)
    ax.set_yticks(centres)
    ax.set_yticklabels(models, fontsize=fs)
    ax.tick_params(length=0)
    notes = [caption] if caption else []
    if np.isnan(m).any():
        notes.append("grey: undefined (a constant layer)")
    if notes:
        fig.supxlabel(" · ".join(notes), fontsize=7)
    return fit_canvas(fig)


@dataclass
class Curve:
    """One pair of models: for every layer of A (relative depth ``x``), the relative depth ``y`` of its best
    match in B; ``inits``: ``pretrained``, ``random`` or ``mixed``."""

    label: str
    x: np.ndarray
    y: np.ndarray
    inits: str


@dataclass
class CorrespondencePanel:
    title: str
    xlabel: str
    ylabel: str
    curves: list[Curve] = field(default_factory=list)


def correspondence_panels(
    res: Any, models: Mapping[str, tuple[str, str]], family_order: Sequence[str]
) -> list[CorrespondencePanel]:
    """One panel per family pair of a joint result ``res`` (any measure: ``models``, ``block``), a curve per pair
    of models, A the one of the earlier family in ``family_order``; ``models``: ``{tag: (family, init)}``."""
    rank = {f: i for i, f in enumerate(family_order)}
    panels: dict[tuple[str, str], CorrespondencePanel] = {}
    for a_i, a in enumerate(res.models):
        for b in res.models[a_i + 1 :]:
            if rank.get(models[b][0], 99) < rank.get(models[a][0], 99):
                a, b = b, a
            fa, fb = models[a][0], models[b][0]
            panel = panels.setdefault(
                (fa, fb),
                CorrespondencePanel(
                    f"{fa} vs {fb}",
                    f"layer of A ({fa}), relative depth",
                    f"best match in B ({fb}), relative depth",
                ),
            )
            block = res.block(a, b).numpy()
            best = best_matches(block)
            ok = best >= 0
            x = np.arange(block.shape[0]) / max(block.shape[0] - 1, 1)
            inits = {models[a][1], models[b][1]}
            kind = inits.pop() if len(inits) == 1 else "mixed"
            panel.curves.append(Curve(f"{a} vs {b}", x[ok], best[ok] / max(block.shape[1] - 1, 1), kind))
    return list(panels.values())


def correspondence_figure(
    panels: Sequence[CorrespondencePanel], *, title: str, caption: str | None = None
) -> Figure:
    """One panel per family pair: the best-matching layer of B for every layer of A, both on a relative-depth
    axis [0, 1]; the dotted diagonal is "same depth"; a colour and marker per pair of models, the line style
    by their inits (solid: both trained, dashed: both random, dash-dot: one of each)."""
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(4.6 * cols, 4.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, panel in zip(axes.flat, panels):
        ax.plot([0, 1], [0, 1], **REFERENCE, label="same relative depth")
        for k, c in enumerate(panel.curves):
            ax.plot(
                c.x,
                c.y,
                marker=MARKERS[k % len(MARKERS)],
                ms=2.5,
                lw=1.2,
                color=f"C{k % 10}",
                ls=INIT_STYLES.get(c.inits, "-"),
                label=f"{c.label} ({c.inits})",
            )
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=8)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.legend(
            fontsize=6,
            loc="upper left",
            title="solid: trained · dashed: random · dash-dot: one of each",
            title_fontsize=5.5,
        )
    fig.suptitle(title, fontsize=10)
    if caption:
        fig.supxlabel(caption, fontsize=7)
    return fit_canvas(fig)


__all__ = [
    "CorrespondencePanel",
    "Curve",
    "INIT_STYLES",
    "correspondence_figure",
    "correspondence_panels",
    "joint_figure",
]
