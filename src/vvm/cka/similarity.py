"""Several similarity measures in one pass: one recorder, one forward per batch, each measure's metric keyed by
its name (:mod:`vvm.cka.measures`: ``cka``, ``rsa``, ``knn``).

- :class:`StreamingSimilarity`: the layers of one model against themselves, or of two models (as
  :class:`~vvm.cka.streaming.StreamingCKA`);
- :class:`JointSimilarity`: every layer of several models against every other (as :class:`~vvm.cka.joint.JointCKA`).

Per batch the recorder makes each layer's Gram once (and, when a measure needs the Gram of the raw features,
its cheap extras); every measure transforms the same stack and adds one product to its own float64 sums.
CKA's numbers are those of StreamingCKA/JointCKA exactly: it runs last, on the Grams as they came.

With a :class:`~vvm.cka.pools.PassPlan` (``plan=``), each forward batch is a unit of the plan: the pooled
measures (RSA, kNN) take it whole when it is a pool, and CKA takes its balanced batches, the diagonal blocks of
the unit's Grams, under their own global ids. Without one, every forward batch is one CKA batch and one pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from vvm.cka.joint import JointLayout, JointModels, joint_result
from vvm.cka.measures.mean import MeasureResult
from vvm.cka.measures_pass import MeasuresPass, Params, build_measures, metric_batches
from vvm.cka.metric import HSICMetric
from vvm.cka.pools import PassPlan
from vvm.cka.presets import LayerSpec


@dataclass(repr=False)
class JointMeasureResult(JointLayout, MeasureResult):
    """A :class:`MeasureResult` over the layers of several models (blocks as :class:`~vvm.cka.joint.JointResult`)."""

    models: list[str] = field(default_factory=list)
    model_index: Tensor | None = None


class _Measures(MeasuresPass, nn.Module):
    """What both classes add to the pass: each measure's metric in a ModuleDict (``.to(device)`` moves them all)."""

    @property
    def device(self) -> torch.device:
        return next(iter(self.metrics.values())).device

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()


class StreamingSimilarity(_Measures):
    """``measures`` between the layers of ``model`` (and of ``other``) in one pass, streamed over batches.

    Args:
        measures: names of registered measures, e.g. ``["cka", "rsa", "knn"]``.
        params: each measure's parameters, e.g. ``{"rsa": {"correlation": "pearson"}, "knn": {"k": 10}}``.
        plan: the pass's :class:`~vvm.cka.pools.PassPlan` (pools for RSA and kNN, CKA's batches within them);
            None: every forward batch is one CKA batch and one pool.
        the others: as :class:`~vvm.cka.streaming.StreamingCKA` (``kernel``, ``kernel_params``, ``estimator``
            are CKA's; ``precision`` is the recorder's and CKA's).

    Usage::

        m = StreamingSimilarity(model, "blocks", measures=["cka", "rsa", "knn"])
        with m.track():
            for x in batches:
                model(x)
        res = m.compute()   # {"cka": CKAResult, "rsa": MeasureResult, "knn": MeasureResult}
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = "blocks",
        *,
        measures: Sequence[str] = ("cka",),
        params: Params | None = None,
        other: nn.Module | None = None,
        other_layers: LayerSpec | None = None,
        max_batches: int | None = None,
        plan: PassPlan | None = None,
        **engine: Any,
    ) -> None:
        super().__init__()
        built, plumbing = self._streaming_parts(model, layers, other, other_layers, measures, params, engine)
        ly = None if plumbing.symmetric else plumbing.modules_y
        self.metrics = nn.ModuleDict(
            {
                n: m.make_metric(plumbing.modules_x, ly, max_batches=metric_batches(m, plan, max_batches))
                for n, m in built.items()
            }
        )
        self._start(built, plumbing, plan)

    def compute(self) -> dict[str, Any]:
        """``{measure: result}``: a :class:`~vvm.cka.result.CKAResult` for ``cka``, a :class:`MeasureResult`
        for the others."""
        return self._results()


class JointSimilarity(JointModels, _Measures):
    """``measures`` between every layer of every model in ``models`` (``{key: network}``), one pass; arguments
    as :class:`~vvm.cka.joint.JointCKA` plus ``measures`` and ``params`` (see :class:`StreamingSimilarity`).
    ``compute()`` gives ``{measure: result}`` with the blocks of :class:`~vvm.cka.joint.JointResult`."""

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        layers: LayerSpec | Mapping[str, LayerSpec] = "blocks",
        *,
        measures: Sequence[str] = ("cka",),
        params: Params | None = None,
        max_batches: int | None = None,
        block_layers: int | str | None = "auto",
        plan: PassPlan | None = None,
        **engine: Any,
    ) -> None:
        super().__init__()
        built, plumbing = self._joint_parts(models, layers, measures, params, engine, block_layers)
        metrics = {
            n: m.make_metric(plumbing.names, None, max_batches=metric_batches(m, plan, max_batches))
            for n, m in built.items()
        }
        if isinstance(metrics.get("cka"), HSICMetric) and not self._auto_blocks:
            metrics["cka"].block_layers = block_layers
        self.metrics = nn.ModuleDict(metrics)
        self._start(built, plumbing, plan)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, res in self._results().items():
            if isinstance(res, MeasureResult):
                base = {f.name: getattr(res, f.name) for f in fields(MeasureResult) if f.init}
                out[name] = JointMeasureResult(**base, models=self.models, model_index=self.model_index)
            else:
                out[name] = joint_result(res, self.models, self.model_index)
        return out


__all__ = ["JointMeasureResult", "JointSimilarity", "StreamingSimilarity", "build_measures"]
