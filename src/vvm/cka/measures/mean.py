"""BatchMeanMetric: a similarity that has a value per batch (RSA, mutual kNN), averaged over the batches.

With ``v_b`` the batch's ``[L_x, L_y]`` values and ``w_b = n_b`` its size, every entry is the weighted mean
``v̄ = Σ w_b v_b / Σ w_b`` over the batches where both of its layers are defined, with the standard error of a
weighted mean of ``B`` independent batches ``se² = B/(B-1) · Σ w_b² (v_b - v̄)² / (Σ w_b)²`` (for equal weights
the familiar ``s² / B``). The states ``Σ w``, ``Σ w v``, ``Σ w²``, ``Σ w² v``, ``Σ w² v²`` and the count of batches
(all per entry: a layer that is constant in one batch has no value there) give both; they are float64 and
summed across DDP ranks. Per-batch values (NaN where undefined) are kept by global batch id, as
:class:`~vvm.cka.metric.HSICMetric` keeps its HSICs, so two runs over the same batches give paired differences.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vvm.cka.batch_sums import LayerPairMetric, Shapes
from vvm.cka.result import MatrixResult, optional_arrays

_SUMS = ("w", "wv", "w2", "w2v", "w2v2", "count")


def mean_and_stderr(sums: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The weighted mean and its standard error from the sums ``w, wv, w2, w2v, w2v2, count`` (see the module
    docstring); NaN where no batch (mean) or fewer than two (standard error) defined the entry."""
    w, count = sums["w"], sums["count"]
    safe = torch.where(w > 0, w, torch.ones_like(w))
    mean = torch.where(w > 0, sums["wv"] / safe, torch.full_like(w, math.nan))
    m0 = torch.nan_to_num(mean)
    # Σ w²(v - v̄)² expanded; a sum of squares, so rounding below 0 is 0
    resid = (sums["w2v2"] - 2 * m0 * sums["w2v"] + m0 * m0 * sums["w2"]).clamp_min(0)
    c = torch.where(count > 1, count, torch.full_like(count, 2.0))
    se = torch.sqrt(resid / (safe * safe) * c / (c - 1))
    return mean, torch.where(count > 1, se, torch.full_like(se, math.nan))


def weighted_mean_stderr(values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The same mean and standard error from per-batch values ``[B, ...]`` (NaN: undefined in that batch) and
    weights ``[B]`` (used for paired differences: pass the per-batch differences)."""
    d = torch.isfinite(values)
    w = weights.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1))) * d
    v = torch.where(d, values, torch.zeros_like(values))
    sums = {
        "w": w.sum(0),
        "wv": (w * v).sum(0),
        "w2": (w * w).sum(0),
        "w2v": (w * w * v).sum(0),
        "w2v2": (w * w * v * v).sum(0),
        "count": d.to(values.dtype).sum(0),
    }
    return mean_and_stderr(sums)


@dataclass
class MeasureResult(MatrixResult):
    """A similarity matrix of one measure with its standard error and what it was estimated from.

    ``matrix`` (float64 ``[L_x, L_y]``), ``stderr`` (NaN with fewer than two batches), ``layers_x``/``layers_y``;
    ``params`` the measure's parameters; ``defined_x``/``defined_y`` in how many batches each layer had a value
    (a constant layer has none: its row/column is NaN and it is listed in ``undefined_x``/``undefined_y``);
    ``batch_*``: per-batch values by global batch id, when kept (paired differences); ``excluded_x``/``excluded_y``
    how many examples each layer left out over all batches (kNN: all-zero features); ``facts``: what the values
    refer to beside the parameters (a pooled measure: ``pool_size``, ``n_pools``, ``n_declared``, ``whole_split``;
    kNN: ``chance``)."""

    measure: str
    params: dict[str, Any] = field(default_factory=dict)
    defined_x: Tensor | None = None
    defined_y: Tensor | None = None
    activation_dtype: str = ""
    batch_ids: Tensor | None = None
    batch_weights: Tensor | None = None
    batch_values: Tensor | None = None
    excluded_x: Tensor | None = None
    excluded_y: Tensor | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    undefined_x: list[str] = field(init=False)
    undefined_y: list[str] = field(init=False)

    def __post_init__(self) -> None:
        def none(names: list[str], counts: Tensor | None) -> list[str]:
            return [] if counts is None else [n for n, c in zip(names, counts.tolist()) if not c > 0]

        self.undefined_x = none(self.layers_x, self.defined_x) if self.n_batches else []
        self.undefined_y = none(self.layers_y, self.defined_y) if self.n_batches else []

    def own_arrays(self) -> dict[str, np.ndarray]:
        """``<measure>.npz``'s own: ``measure``, the parameters by name, in how many batches each layer had a
        value, the examples each layer left out, the facts, and the per-batch values when kept."""
        kept = (
            "defined_x",
            "defined_y",
            "excluded_x",
            "excluded_y",
            "batch_ids",
            "batch_weights",
            "batch_values",
        )
        return {
            "measure": np.array(self.measure),
            **{k: np.asarray(v) for k, v in self.params.items()},
            **{k: np.asarray(v) for k, v in self.facts.items()},
            **optional_arrays(self, kept),
        }

    def note(self) -> str:
        """What the values refer to, for a figure's title: ``n=1024 x 9 pools, chance 0.010``."""
        n, pools = self.facts.get("pool_size"), self.facts.get("n_pools")
        if n is None:
            return ""
        text = f"n={n}{' (the whole split)' if self.facts.get('whole_split') else ''} x {pools} pool"
        text += "s" if pools != 1 else ""
        chance = self.facts.get("chance")
        return text + (f", chance {chance:.3f}" if chance is not None else "")

    def __repr__(self) -> str:
        return (
            f"MeasureResult({self.measure}, {len(self.layers_x)}x{len(self.layers_y)} layers, "
            f"n_samples={self.n_samples}, n_batches={self.n_batches}, params={self.params})"
        )


class BatchMeanMetric(LayerPairMetric):
    """Size-weighted means of per-batch similarity matrices ``[L_x, L_y]`` with their standard errors.

    ``update(values, weight=n, batch_id=..., defined_x=..., defined_y=...)`` adds one batch (an entry counts only
    where both its layers are defined); ``compute()`` returns a :class:`MeasureResult`. ``layers_y=None``: the
    columns are the rows (a symmetric matrix; its diagonal has no spread)."""

    def __init__(
        self,
        layers_x: list[str],
        layers_y: list[str] | None = None,
        *,
        measure: str,
        params: dict[str, Any] | None = None,
        max_batches: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.measure = measure
        self.params = dict(params or {})
        self._warned: set[str] = set()
        super().__init__(layers_x, layers_y, max_batches=max_batches, **kwargs)

    def sum_shapes(self, lx: int, ly: int) -> Shapes:
        """The weighted sums of the values (module docstring) per entry, and per layer the number of batches in
        which it had a value."""
        return {
            **{n: (lx, ly) for n in _SUMS},
            "defined_x": (lx,),
            "defined_y": (ly,),
            "excluded_x": (lx,),
            "excluded_y": (ly,),
        }

    def batch_shapes(self, lx: int, ly: int) -> Shapes:
        """Per batch: its values ``v`` (NaN where undefined)."""
        return {"v": (lx, ly)}

    def update(
        self,
        values: Tensor,
        *,
        weight: float,
        batch_id: int | None = None,
        defined_x: Tensor | None = None,
        defined_y: Tensor | None = None,
        excluded_x: Tensor | None = None,
        excluded_y: Tensor | None = None,
    ) -> None:
        """One batch's values ``[L_x, L_y]`` with its weight (its size); ``defined_*`` ``[L]`` (bool): which
        layers have a value in this batch (default: all); ``excluded_*`` ``[L]``: how many of the batch's examples
        each layer left out (default: none)."""
        shape = (len(self.layers_x), len(self.layers_y))
        if tuple(values.shape) != shape:
            raise ValueError(f"expected values of shape {shape}, got {tuple(values.shape)}")
        batch_id = self.next_batch_id(batch_id)
        if self.w.device != values.device:
            self.to(values.device)
        v = values.to(torch.float64)
        dx = torch.ones(shape[0], dtype=torch.bool, device=v.device) if defined_x is None else defined_x
        dy = torch.ones(shape[1], dtype=torch.bool, device=v.device) if defined_y is None else defined_y
        d = dx.to(v.device)[:, None] & dy.to(v.device)[None, :]
        dd, v0 = d.to(torch.float64), torch.where(d, v, torch.zeros_like(v))
        w = float(weight)
        self.w += w * dd
        self.wv += w * v0
        self.w2 += w * w * dd
        self.w2v += w * w * v0
        self.w2v2 += w * w * v0 * v0
        self.count += dd
        self.defined_x += dx.to(self.defined_x)
        self.defined_y += dy.to(self.defined_y)
        if excluded_x is not None:
            self.excluded_x += excluded_x.to(self.excluded_x)
            self.excluded_y += (excluded_x if excluded_y is None else excluded_y).to(self.excluded_y)
        self.n_batches += 1
        self.n_samples += w
        self.keep_batch(batch_id, w, v=torch.where(d, v, torch.full_like(v, math.nan)))

    def compute(self) -> MeasureResult:
        matrix, stderr = mean_and_stderr({k: getattr(self, k) for k in _SUMS})
        if self._symmetric:
            # a layer against itself has the same value (1) in every batch: no spread
            stderr.diagonal().copy_(torch.where(self.count.diagonal() > 1, 0.0, math.nan))
        per_batch = {}
        kept = self.kept_batches()
        if kept is not None:
            ids, v = kept
            per_batch = {"batch_ids": ids, "batch_weights": v["w"], "batch_values": v["v"]}
        res = MeasureResult(
            **self.result_fields(matrix, stderr),
            measure=self.measure,
            params=dict(self.params),
            defined_x=self.defined_x.detach().cpu().clone(),
            defined_y=self.defined_y.detach().cpu().clone(),
            excluded_x=self.excluded_x.detach().cpu().clone(),
            excluded_y=self.excluded_y.detach().cpu().clone(),
            **per_batch,
        )
        self._warn_undefined(res)
        self._warn_excluded(res)
        return res

    def _warn_excluded(self, res: MeasureResult) -> None:
        """One warning naming the layers that left examples out (kNN: examples whose features are all zero)."""
        found: dict[str, int] = {}
        for names, counts in ((res.layers_x, res.excluded_x), (res.layers_y, res.excluded_y)):
            assert counts is not None
            found.update({n: int(c) for n, c in zip(names, counts.tolist()) if c > 0})
        if found and "excluded" not in self._warned:
            self._warned.add("excluded")
            listed = ", ".join(f"{n} ({c})" for n, c in found.items())
            warnings.warn(
                f"{self.measure}: examples whose features are all zero were left out in layers {listed} "
                "(examples over all pools); their entries average the remaining examples",
                stacklevel=3,
            )

    def _warn_undefined(self, res: MeasureResult) -> None:
        """One warning per layer: undefined (NaN) in every batch, or left out of the batches it was constant in."""
        if not res.n_batches:
            return
        gone = [n for n in dict.fromkeys(res.undefined_x + res.undefined_y) if n not in self._warned]
        partly = []
        for names, counts in ((res.layers_x, res.defined_x), (res.layers_y, res.defined_y)):
            assert counts is not None
            partly += [
                n for n, c in zip(names, counts.tolist()) if 0 < c < res.n_batches and n not in self._warned
            ]
        self._warned.update(gone + partly)
        if gone:
            warnings.warn(
                f"{self.measure} is undefined (NaN) for layers that are constant in every batch: "
                f"{', '.join(gone)}",
                stacklevel=3,
            )
        if partly:
            warnings.warn(
                f"{self.measure}: layers {', '.join(dict.fromkeys(partly))} were constant in some batches; their "
                "entries average the batches where they were not",
                stacklevel=3,
            )


__all__ = ["BatchMeanMetric", "MeasureResult", "mean_and_stderr", "weighted_mean_stderr"]
