"""Figures of one job's per-layer analyses, drawn from the arrays their .npz files hold (plain mappings, so a
figure can be redrawn from the files alone): receptive-field maps with their radii, attention distances per
head and block (uniform attention dotted), linear-probe accuracy per layer (chance dotted). Line styles mean
what :mod:`vvm.plots.style` says: dotted grey is a reference, dashed is kept for random init."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from vvm.plots.style import REFERENCE, fit_canvas

MAX_MAPS = 36  # receptive-field panels drawn at most (evenly spaced over the layers beyond that)
ERF_COLOURS = ("cyan", "white")  # the circles holding 50% and 90% of a map's mass


def _names(a: Any) -> list[str]:
    return [str(n) for n in np.atleast_1d(a)]


def heading(what: str, title: str | None) -> str:
    """A figure's title: what it shows, then whose it is (``effective receptive fields · r18 (random, ...)``)."""
    return f"{what} · {title}" if title else what


def _shown(n: int, most: int) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, most)})


ERF_GAMMA = 0.5  # the maps' power scale: a few hot pixels at the centre would hide the spread on a linear one


def erf_figure(arrays: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """One panel per layer: the effective receptive field (each map scaled to its own maximum, on a power scale
    with exponent :data:`ERF_GAMMA` so that its spread shows, one colour bar) with circles holding 50% (cyan)
    and 90% (white) of its mass; below, both radii as a fraction of the image side."""
    layers, maps = _names(arrays["layers"]), np.asarray(arrays["maps"], dtype=float)
    r50, r90 = np.asarray(arrays["radius50"], dtype=float), np.asarray(arrays["radius90"], dtype=float)
    centre = np.asarray(arrays["centre"], dtype=float)
    side = float(max(maps.shape[1:]))
    idx = _shown(len(layers), MAX_MAPS)
    cols = min(len(idx), 6)
    rows = math.ceil(len(idx) / cols)
    fig = Figure(figsize=(1.9 * cols + 1.4, 2.0 * rows + 3.0), layout="constrained")
    gs = fig.add_gridspec(
        rows + 1, cols + 1, height_ratios=[1.0] * rows + [1.2], width_ratios=[1.0] * cols + [0.08]
    )
    norm = PowerNorm(ERF_GAMMA, vmin=0.0, vmax=1.0)
    for p, i in enumerate(idx):
        ax = fig.add_subplot(gs[p // cols, p % cols])
        m = maps[i]
        ax.imshow(m / m.max() if m.max() > 0 else m, cmap="magma", norm=norm, interpolation="nearest")
        for r, colour in ((r50[i], ERF_COLOURS[0]), (r90[i], ERF_COLOURS[1])):
            if np.isfinite(r):
                ax.add_patch(Circle(centre[i][::-1], r, fill=False, color=colour, lw=0.9))
        ax.set_title(f"{layers[i]}\nr50 {r50[i]:.1f}, r90 {r90[i]:.1f} px", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap="magma"), cax=fig.add_subplot(gs[:rows, cols]))
    cb.set_label(f"|∂ centre unit / ∂ input| / map's max\n(power scale γ = {ERF_GAMMA:g})", fontsize=7)
    ax = fig.add_subplot(gs[rows, :cols])
    x = np.arange(len(layers))
    ax.plot(x, r50 / side, "o-", ms=3, color=ERF_COLOURS[0], label="radius holding 50% (cyan circle)")
    ax.plot(x, r90 / side, "s-", ms=3, color="0.25", label="radius holding 90% (white circle)")
    ax.set_xticks(x[:: max(1, len(x) // 30)])
    ax.set_xticklabels(layers[:: max(1, len(x) // 30)], rotation=90, fontsize=6)
    ax.set_ylabel("fraction of image side")
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)
    n = int(np.asarray(arrays.get("n_images", 0)))
    fig.suptitle(heading("effective receptive fields", title))
    fig.supxlabel(
        f"Luo et al. (2016): gradient of the centre unit, mean over {n} images, "
        f"{maps.shape[1]}×{maps.shape[2]} px input",
        fontsize=7,
    )
    return fit_canvas(fig)


def uniform_distance(grid: Any, patch: Any) -> float:
    """The mean attention distance of uniform attention over a ``grid`` of patches of ``patch`` pixels: the
    mean distance between two patch centres (queries and keys over the whole grid, as the measured one)."""
    (gr, gc), (pr, pc) = (np.asarray(grid, dtype=int).ravel()[:2], np.asarray(patch, dtype=float).ravel()[:2])
    rows, cols = np.meshgrid((np.arange(gr) + 0.5) * pr, (np.arange(gc) + 0.5) * pc, indexing="ij")
    c = np.stack([rows.ravel(), cols.ravel()], axis=1)
    return float(np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1)).mean())


def attention_figure(arrays: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Mean attention distance of every head (dots) and their mean (line), block by block, in input pixels;
    uniform attention over the patch grid dotted."""
    title = heading("mean attention distance", title)
    blocks, dist = _names(arrays["blocks"]), np.asarray(arrays["distance"], dtype=float)
    x = np.arange(len(blocks))
    fig = Figure(figsize=(max(5.0, 0.28 * len(blocks) + 2.5), 4.0), layout="constrained")
    ax = fig.subplots()
    for h in range(dist.shape[1]):
        ax.scatter(x, dist[:, h], s=10, color="tab:blue", alpha=0.6, lw=0, label="a head" if h == 0 else None)
    ax.plot(x, np.nanmean(dist, axis=1), "-", color="black", lw=1, label="mean over heads")
    if "grid" in arrays and "patch" in arrays:
        ax.axhline(uniform_distance(arrays["grid"], arrays["patch"]), **REFERENCE, label="uniform attention")
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
    return fit_canvas(fig)


def probe_figure(arrays: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Linear-probe accuracy on the evaluation split per layer (± 1.96 binomial standard errors where the file
    holds them), with chance (1 / classes) dotted."""
    title = heading("linear probes", title)
    layers, acc = _names(arrays["layers"]), np.asarray(arrays["accuracy"], dtype=float)
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(5.0, 0.22 * len(layers) + 2.5), 4.0), layout="constrained")
    ax = fig.subplots()
    se = np.asarray(arrays["accuracy_se"], dtype=float) if "accuracy_se" in arrays else None
    ax.errorbar(
        x,
        acc,
        yerr=None if se is None else 1.96 * se,
        fmt="o-",
        ms=3,
        capsize=2,
        elinewidth=0.8,
        label="evaluation accuracy" + (" (± 1.96 binomial SE)" if se is not None else ""),
    )
    if "holdout_accuracy" in arrays:
        ax.plot(
            x,
            np.asarray(arrays["holdout_accuracy"], dtype=float),
            "s-",
            ms=2.5,
            lw=0.8,
            color="tab:green",
            label="held-out (ridge choice)",
        )
    k = int(np.asarray(arrays.get("num_classes", 0)))
    if k:
        ax.axhline(1.0 / k, **REFERENCE, label=f"chance (1/{k})")
    ax.set_xticks(x[:: max(1, len(x) // 40)])
    ax.set_xticklabels(layers[:: max(1, len(x) // 40)], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear probe accuracy")
    n_train, n_eval = int(np.asarray(arrays.get("n_train", 0))), int(np.asarray(arrays.get("n_eval", 0)))
    ax.set_title(
        f"{title or 'linear probes'}\nridge on pooled features; {n_train} train, {n_eval} eval", fontsize=9
    )
    ax.legend(fontsize=7)
    return fit_canvas(fig)
