"""Figures of one job's per-layer analyses, drawn from the arrays their .npz files hold (plain mappings, so a
figure can be redrawn from the files alone): receptive-field maps with their radii, attention distances per
head and block, linear-probe accuracy per layer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

MAX_MAPS = 36  # receptive-field panels drawn at most (evenly spaced over the layers beyond that)


def _names(a: Any) -> list[str]:
    return [str(n) for n in np.atleast_1d(a)]


def _shown(n: int, most: int) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, most)})


def erf_figure(arrays: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """One panel per layer: the effective receptive field (each map scaled to its own maximum) with circles
    holding 50% (dashed) and 90% (solid) of its mass; below, both radii as a fraction of the image side."""
    layers, maps = _names(arrays["layers"]), np.asarray(arrays["maps"], dtype=float)
    r50, r90 = np.asarray(arrays["radius50"], dtype=float), np.asarray(arrays["radius90"], dtype=float)
    centre = np.asarray(arrays["centre"], dtype=float)
    side = float(max(maps.shape[1:]))
    idx = _shown(len(layers), MAX_MAPS)
    cols = min(len(idx), 6)
    rows = math.ceil(len(idx) / cols)
    fig = Figure(figsize=(1.9 * cols + 0.4, 2.0 * rows + 2.6), layout="constrained")
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.2])
    for p, i in enumerate(idx):
        ax = fig.add_subplot(gs[p // cols, p % cols])
        m = maps[i]
        ax.imshow(m / m.max() if m.max() > 0 else m, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for r, style in ((r50[i], "--"), (r90[i], "-")):
            if np.isfinite(r):
                ax.add_patch(Circle(centre[i][::-1], r, fill=False, color="cyan", ls=style, lw=0.8))
        ax.set_title(f"{layers[i]}\nr50 {r50[i]:.1f}, r90 {r90[i]:.1f} px", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(gs[rows, :])
    x = np.arange(len(layers))
    ax.plot(x, r50 / side, "o--", ms=3, label="radius holding 50%")
    ax.plot(x, r90 / side, "o-", ms=3, label="radius holding 90%")
    ax.set_xticks(x[:: max(1, len(x) // 30)])
    ax.set_xticklabels(layers[:: max(1, len(x) // 30)], rotation=90, fontsize=6)
    ax.set_ylabel("fraction of image side")
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)
    n = int(np.asarray(arrays.get("n_images", 0)))
    fig.suptitle(f"{title or 'effective receptive fields'}  ({n} images, {maps.shape[1]}x{maps.shape[2]} px)")
    return fig


def attention_figure(arrays: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Mean attention distance of every head (dots) and their mean (line), block by block, in input pixels."""
    blocks, dist = _names(arrays["blocks"]), np.asarray(arrays["distance"], dtype=float)
    x = np.arange(len(blocks))
    fig = Figure(figsize=(max(5.0, 0.28 * len(blocks) + 2.5), 4.0), layout="constrained")
    ax = fig.subplots()
    for h in range(dist.shape[1]):
        ax.scatter(x, dist[:, h], s=10, color="tab:blue", alpha=0.6, lw=0, label="a head" if h == 0 else None)
    ax.plot(x, np.nanmean(dist, axis=1), "-", color="black", lw=1, label="mean over heads")
    ax.set_xticks(x)
    ax.set_xticklabels(blocks, rotation=90, fontsize=6)
    ax.set_ylabel("mean attention distance (pixels)")
    side = float(np.asarray(arrays.get("image_size", [0])).max())
    ax.set_ylim(0, max(0.75 * side, 1.1 * float(np.nanmax(dist))))
    renorm = bool(np.asarray(arrays.get("renormalised", True)))
    note = "class/prefix tokens left out" + ("; weights renormalised over patches" if renorm else "")
    if "prefix_mass" in arrays:  # what the renormalisation hides: the share of attention on those tokens
        mass = np.asarray(arrays["prefix_mass"], dtype=float)
        note += f"\nattention on class/prefix tokens per head: {np.nanmin(mass):.3f}-{np.nanmax(mass):.3f}"
    n = int(np.asarray(arrays.get("n_images", 0)))
    ax.set_title(f"{title or 'mean attention distance'}\n{n} images\n{note}", fontsize=8)
    ax.legend(fontsize=7)
    return fig


def probe_figure(arrays: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Linear-probe accuracy on the evaluation split per layer, with chance (1 / classes) dotted."""
    layers, acc = _names(arrays["layers"]), np.asarray(arrays["accuracy"], dtype=float)
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(5.0, 0.22 * len(layers) + 2.5), 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, acc, "o-", ms=3, label="evaluation accuracy")
    if "accuracy_se" in arrays:  # the binomial standard error of each layer's accuracy
        se = 2 * np.asarray(arrays["accuracy_se"], dtype=float)
        ax.fill_between(x, acc - se, acc + se, alpha=0.2, lw=0, label="±2 SE (binomial)")
    if "holdout_accuracy" in arrays:
        ax.plot(x, np.asarray(arrays["holdout_accuracy"], dtype=float), ".:", color="grey", label="held-out")
    k = int(np.asarray(arrays.get("num_classes", 0)))
    if k:
        ax.axhline(1.0 / k, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(x[:: max(1, len(x) // 40)])
    ax.set_xticklabels(layers[:: max(1, len(x) // 40)], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear probe accuracy")
    n_train, n_eval = int(np.asarray(arrays.get("n_train", 0))), int(np.asarray(arrays.get("n_eval", 0)))
    ax.set_title(
        f"{title or 'linear probes'}\nridge on pooled features; {n_train} train, {n_eval} eval", fontsize=9
    )
    ax.legend(fontsize=7)
    return fig
