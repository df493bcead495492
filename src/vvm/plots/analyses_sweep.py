"""The sweep's cross-family figures of the per-layer analyses: every model on one relative-depth axis (0 = the
input, 1 = its last tracked layer, or its last attention block), one colour per family, random inits dashed
(hollow dots) and trained ones solid (filled dots), as Raghu et al. (2021) draw them.

Each record is a plain mapping: ``model``, ``family``, ``init`` and the arrays of the job's .npz file
(``dict(np.load("erf.npz"))`` with the three keys added). A record without the arrays an analysis needs
(attention for a CNN) is left out and named in a footnote.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vvm.models import families
from vvm.plots.analyses import uniform_distance
from vvm.plots.style import RANDOM_LS, REFERENCE, fit_canvas

KINDS = ("erf", "attention", "probe")
NEEDS = {
    "erf": ("depth", "radius50", "radius90", "image_size"),
    "attention": ("distance",),
    "probe": ("accuracy",),
}
MARKERS = "osD^vP*X"


def family_colours(names: Sequence[str]) -> dict[str, Any]:
    """A colour per family: the registry's families first (in display order), then any other, in order."""
    order = list(dict.fromkeys([*families(), *names]))
    palette = matplotlib.colormaps["tab10"]
    return {f: palette(i % 10) for i, f in enumerate(order)}


def _is_random(init: Any) -> bool:
    return str(init).lower() == "random"


def _depth(rec: Mapping[str, Any], n: int) -> np.ndarray:
    d = rec.get("depth")
    return np.asarray(d, dtype=float) if d is not None and np.size(d) == n else (np.arange(n) + 1) / n


def _style(rec: Mapping[str, Any], colours: dict, markers: dict) -> dict[str, Any]:
    return dict(
        color=colours[str(rec["family"])],
        ls=RANDOM_LS if _is_random(rec["init"]) else "-",
        marker=markers[str(rec["model"])],
        mfc="white" if _is_random(rec["init"]) else colours[str(rec["family"])],
        ms=4,
        lw=1.2,
        label=f"{rec['model']} · {rec['init']}",
    )


def _markers(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Models of one family told apart by their marker."""
    out: dict[str, str] = {}
    per_family: dict[str, int] = {}
    for rec in records:
        model, fam = str(rec["model"]), str(rec["family"])
        if model not in out:
            out[model] = MARKERS[per_family.get(fam, 0) % len(MARKERS)]
            per_family[fam] = per_family.get(fam, 0) + 1
    return out


def _draw_attention(ax: Axes, rec: Mapping[str, Any], style: dict[str, Any]) -> None:
    dist = np.asarray(rec["distance"], dtype=float)
    depth = _depth(rec, dist.shape[0])
    for h in range(dist.shape[1]):
        ax.scatter(
            depth,
            dist[:, h],
            s=9,
            marker=style["marker"],
            facecolors=style["mfc"],
            edgecolors=style["color"],
            lw=0.6,
            alpha=0.7,
        )
    ax.plot(
        depth, np.nanmean(dist, axis=1), ls=style["ls"], color=style["color"], lw=1.2, label=style["label"]
    )


def _panels(kind: str) -> list[tuple[str, str]]:
    """``(array key, y label)`` per panel."""
    if kind == "erf":
        return [
            ("radius50", "ERF radius holding 50% (fraction of image)"),
            ("radius90", "ERF radius holding 90% (fraction of image)"),
        ]
    if kind == "attention":
        return [("distance", "mean attention distance (pixels)")]
    return [("accuracy", "linear probe accuracy")]


def sweep_figure(kind: str, records: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """One figure of analysis ``kind`` (``erf``, ``attention``, ``probe``) for all ``records`` of a sweep."""
    if kind not in KINDS:
        raise ValueError(f"analysis {kind!r}: use one of {', '.join(KINDS)}")
    usable = [r for r in records if all(k in r for k in NEEDS[kind])]
    left_out = [
        f"{r.get('model')} · {r.get('init')}" for r in records if not all(k in r for k in NEEDS[kind])
    ]
    if not usable:
        raise ValueError(f"no record holds the {kind} arrays ({', '.join(NEEDS[kind])}): nothing to draw")
    colours = family_colours([str(r["family"]) for r in usable])
    markers = _markers(usable)
    panels = _panels(kind)
    fig = Figure(figsize=(5.6 * len(panels) + 0.4, 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        for rec in usable:
            style = _style(rec, colours, markers)
            if kind == "attention":
                _draw_attention(ax, rec, style)
                continue
            y = np.asarray(rec[key], dtype=float)
            if kind == "erf":
                y = y / float(np.max(np.asarray(rec["image_size"])))
            ax.plot(_depth(rec, y.size), y, **style)
        _references(ax, kind, usable)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02 if kind != "attention" else None)
        last = "last attention block" if kind == "attention" else "last tracked layer"
        ax.set_xlabel(f"relative depth (0 = input, 1 = {last})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    # below the panels, so that neither a long legend nor a long title covers the other
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 3 * len(panels)),
        fontsize=7,
        title="solid/filled: trained · dashed/hollow: random init · dotted grey: reference",
        title_fontsize=7,
    )
    if left_out:
        note = textwrap.fill(f"not applicable: {', '.join(left_out)}", 100)
        axes[0][0].set_title(note, fontsize=7, color="grey", loc="left")
    fig.suptitle(
        title
        or {
            "erf": "effective receptive fields",
            "attention": "mean attention distance",
            "probe": "linear probes",
        }[kind]
    )
    return fit_canvas(fig)


def _references(ax: Axes, kind: str, records: Sequence[Mapping[str, Any]]) -> None:
    """The dotted reference lines: chance 1/classes (probe), uniform attention over the patch grid
    (attention); one line per distinct value."""
    values: dict[float, str] = {}
    for rec in records:
        if kind == "probe" and int(np.asarray(rec.get("num_classes", 0))):
            k = int(np.asarray(rec["num_classes"]))
            values[1.0 / k] = f"chance (1/{k})"
        if kind == "attention" and "grid" in rec and "patch" in rec:
            values[round(uniform_distance(rec["grid"], rec["patch"]), 6)] = "uniform attention"
    for i, (v, label) in enumerate(sorted(values.items())):
        ax.axhline(v, **REFERENCE, label=label if i == 0 or len({*values.values()}) > 1 else None)
