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
from vvm.plots.style import RANDOM_LS, REFERENCE, fit_canvas

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


def _draw_heads(ax: Axes, depth: np.ndarray, y: np.ndarray, style: dict[str, Any]) -> None:
    """A ``[layers, k]`` array: a dot per column (an attention head), their mean as the line."""
    for h in range(y.shape[1]):
        ax.scatter(
            depth,
            y[:, h],
            s=9,
            marker=style["marker"],
            facecolors=style["mfc"],
            edgecolors=style["color"],
            lw=0.6,
            alpha=0.7,
        )
    ax.plot(depth, np.nanmean(y, axis=1), ls=style["ls"], color=style["color"], lw=1.2, label=style["label"])


def _draw(ax: Axes, rec: Mapping[str, Any], key: str, scale: str | None, style: dict[str, Any]) -> None:
    y = np.asarray(rec[key], dtype=float)
    if scale is not None:
        y = y / float(np.max(np.asarray(rec[scale])))
    depth = _depth(rec, y.shape[0])
    if y.ndim == 2:
        _draw_heads(ax, depth, y, style)
    else:
        ax.plot(depth, y, **style)


def sweep_figure(kind: str, records: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """One figure of the registered analysis ``kind`` (erf, attention, probe, ...) for all ``records`` of a sweep,
    drawn as its ``sweep`` panels say (:class:`vvm.analyses.registry.SweepPanels`)."""
    from vvm.analyses import ANALYSES

    analysis = ANALYSES.make(kind)
    spec = analysis.sweep
    usable = [r for r in records if all(k in r for k in spec.keys)]
    left_out = [f"{r.get('model')} · {r.get('init')}" for r in records if not all(k in r for k in spec.keys)]
    if not usable:
        raise ValueError(f"no record holds the {kind} arrays ({', '.join(spec.keys)}): nothing to draw")
    colours = family_colours([str(r["family"]) for r in usable])
    markers = _markers(usable)
    fig = Figure(figsize=(5.6 * len(spec.panels) + 0.4, 4.6), layout="constrained")
    axes = fig.subplots(1, len(spec.panels), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], spec.panels):
        for rec in usable:
            _draw(ax, rec, key, spec.scale, _style(rec, colours, markers))
        _references(ax, [analysis.reference(rec) for rec in usable])
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, spec.top)
        ax.set_xlabel(f"relative depth (0 = input, 1 = {spec.last})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    # below the panels, so that neither a long legend nor a long title covers the other
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 3 * len(spec.panels)),
        fontsize=7,
        title="solid/filled: trained · dashed/hollow: random init · dotted grey: reference",
        title_fontsize=7,
    )
    if left_out:
        note = textwrap.fill(f"not applicable: {', '.join(left_out)}", 100)
        axes[0][0].set_title(note, fontsize=7, color="grey", loc="left")
    fig.suptitle(title or analysis.title)
    return fit_canvas(fig)


def _references(ax: Axes, found: Sequence[tuple[float, str] | None]) -> None:
    """The dotted reference lines (the analysis's ``reference`` of each record: chance 1/classes, uniform
    attention over the patch grid, ...), one line per distinct value."""
    values = dict(v for v in found if v is not None)
    for i, (v, label) in enumerate(sorted(values.items())):
        ax.axhline(v, **REFERENCE, label=label if i == 0 or len({*values.values()}) > 1 else None)
