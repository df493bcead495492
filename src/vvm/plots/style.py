"""What every vvm figure shares: how a quantity is named on a colour bar, the caption line (n examples, batches,
estimator), the job's title from its facts, one meaning per line style, stage boundaries of long layer lists, the
opt-in colour range of maps that live near 1, and a canvas that holds all its text.

Line styles mean one thing in every figure: solid = trained weights (or the measured value), dashed = random
init, dotted grey = a reference a reader compares with (chance, uniform attention, same depth).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vvm.settings.cka import COLOUR_RANGES  # similarity.colour_range

ESTIMATOR_NAMES = {"unbiased": "unbiased HSIC₁", "biased": "biased HSIC₀"}
RANDOM_LS = "--"  # random init
REFERENCE = {"ls": ":", "color": "0.35", "lw": 1.0}  # chance, uniform attention, same depth


def cka_quantity(kernel: Any = "linear", estimator: Any = "unbiased") -> str:
    """``linear CKA (unbiased HSIC₁)``: the kernel and the estimator a CKA map was computed with."""
    return f"{kernel} CKA ({ESTIMATOR_NAMES.get(str(estimator), str(estimator))})"


def _plain(v: Any) -> Any:
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else v


def quantity(measure: str, facts: Mapping[str, Any]) -> str:
    """How a colour bar names ``measure``'s values: CKA with its kernel and estimator, another measure by its
    title with the parameters in ``facts`` (a result's ``params`` or its npz arrays): ``mutual 10-NN``."""
    if measure == "cka":
        return cka_quantity(_plain(facts.get("kernel", "linear")), _plain(facts.get("estimator", "unbiased")))
    from vvm.cka.measures import MEASURES, make_measure

    if measure not in MEASURES:
        return measure
    names = {f.name for f in fields(MEASURES[measure].Params)}
    return make_measure(measure, {k: _plain(facts[k]) for k in names if k in facts}).title


def result_quantity(res: Any) -> str:
    """:func:`quantity` of a result object (``CKAResult``: kernel and estimator; ``MeasureResult``: params)."""
    if hasattr(res, "kernel"):
        return cka_quantity(res.kernel, res.estimator)
    return quantity(res.measure, res.params)


def chance_level(measure: str, facts: Mapping[str, Any], n_samples: int, n_batches: int) -> float | None:
    """The value two unrelated layers give where the measure has one: mutual k-NN's ``k / (n − 1)`` for sets of
    ``n`` examples (a declared ``chance`` in ``facts`` first; else ``n`` = the pass's mean batch size)."""
    if "chance" in facts:
        return float(_plain(facts["chance"]))
    if measure != "knn" or "k" not in facts or not n_batches:
        return None
    n = n_samples / n_batches
    return float(_plain(facts["k"])) / (n - 1.0) if n > 1 else None


def caption(n_samples: int | None, n_batches: int | None, *extra: str | None) -> str:
    """The line under a figure: ``n = 360 examples in 2 batches · <extra> · ...`` (empty parts left out)."""
    parts = []
    if n_samples:
        parts.append(
            f"n = {int(n_samples)} examples"
            + (f" in {int(n_batches)} batch{'es' if n_batches != 1 else ''}" if n_batches else "")
        )
    parts += [str(e) for e in extra if e]
    return " · ".join(parts)


def job_title(facts: Mapping[str, Any]) -> str:
    """``r18 (pretrained, digits, seed 0)``: the model, its init, the dataset and the seed of a job's facts
    (result.json's keys); a cross-model job adds ``vs <model> (<init>)``."""
    inner = ", ".join(
        str(facts[k]) if k != "seed" else f"seed {facts[k]}"
        for k in ("init", "dataset", "seed")
        if facts.get(k) is not None
    )
    head = f"{facts.get('model', '?')}" + (f" ({inner})" if inner else "")
    other = facts.get("compare")
    if isinstance(other, Mapping):
        head += f" vs {other.get('model')} ({other.get('init')})"
    return head


def colour_limits(matrix: np.ndarray, colour_range: str = "fixed") -> tuple[float, float]:
    """The colour scale of a similarity map: ``fixed`` [0, 1]; ``auto`` from the smallest defined value off the
    diagonal (rounded down to 0.05) up to 1, for maps that live near 1 (a random ViT's CKA)."""
    if colour_range not in COLOUR_RANGES:
        raise ValueError(f"colour_range={colour_range!r}: use one of {', '.join(COLOUR_RANGES)}")
    m = np.asarray(matrix, dtype=float)
    if colour_range == "fixed":
        return 0.0, 1.0
    off = ~np.eye(*m.shape, dtype=bool) if m.shape[0] == m.shape[1] else np.ones(m.shape, dtype=bool)
    vals = m[off & np.isfinite(m)]
    if not vals.size:
        return 0.0, 1.0
    lo = math.floor(float(vals.min()) * 20.0) / 20.0
    return min(lo, 0.95), 1.0


def stages(names: Sequence[str]) -> list[tuple[str, int, int]]:
    """Runs of consecutive layers that share a stage, ``(stage, start, end)``: the first dotted part of the name
    (``layer1`` of ``layer1.0.conv1``), or the first two when the first is shared by all (``blocks.3`` of
    ``blocks.3.attn.qkv``); ``[]`` when that gives no grouping (one stage, or one layer in every stage)."""
    names = [str(n) for n in names]
    for depth in (1, 2):
        keys = [".".join(n.split(".")[:depth]) for n in names]
        runs: list[tuple[str, int, int]] = []
        for i, k in enumerate(keys):
            if runs and runs[-1][0] == k:
                runs[-1] = (k, runs[-1][1], i + 1)
            else:
                runs.append((k, i, i + 1))
        if 1 < len(runs) < len(names):  # two stages at least, one of them holding two layers or more
            return runs
    return []


def _outside(fig: Figure, renderer: Any) -> tuple[float, float, float, float]:
    """How far (inches) the figure's drawn artists reach beyond its canvas: left, bottom, right, top."""
    box = fig.get_tightbbox(renderer)  # in inches
    w, h = fig.get_size_inches()
    return max(0.0, -box.x0), max(0.0, -box.y0), max(0.0, box.x1 - w), max(0.0, box.y1 - h)


def fit_canvas(fig: Figure, pad: float = 0.05) -> Figure:
    """Grow the canvas until every artist lies inside it (constrained layout cannot move what a fixed-aspect
    heatmap pushes out, e.g. long tick labels): draw, measure, enlarge by the excess; call it last."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for _ in range(3):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        left, bottom, right, top = _outside(fig, canvas.get_renderer())
        if max(left, bottom, right, top) <= 0.0:
            return fig
        w, h = fig.get_size_inches()
        fig.set_size_inches(w + left + right + pad, h + bottom + top + pad)
    return fig


__all__ = [
    "COLOUR_RANGES",
    "ESTIMATOR_NAMES",
    "REFERENCE",
    "RANDOM_LS",
    "caption",
    "chance_level",
    "cka_quantity",
    "colour_limits",
    "fit_canvas",
    "job_title",
    "quantity",
    "result_quantity",
    "stages",
]
