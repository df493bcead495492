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

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from vvm.cka.joint import JointLayout, JointModels, joint_result, update_joint
from vvm.cka.kernels import check_kernel
from vvm.cka.measures.base import Grams, Measure, make_measure
from vvm.cka.measures.mean import MeasureResult
from vvm.cka.metric import HSICMetric, check_precision
from vvm.cka.passes import JointPass, StreamingPass, Tracking, hook_targets, recorder_options, torch_dtype
from vvm.cka.pools import PassPlan, declared_pool
from vvm.cka.presets import LayerSpec

Params = Mapping[str, Mapping[str, Any]]


@dataclass(repr=False)
class JointMeasureResult(JointLayout, MeasureResult):
    """A :class:`MeasureResult` over the layers of several models (blocks as :class:`~vvm.cka.joint.JointResult`)."""

    models: list[str] = field(default_factory=list)
    model_index: Tensor | None = None


def build_measures(names: Sequence[str], params: Params | None, engine: dict[str, Any]) -> dict[str, Measure]:
    """``{name: measure}`` in the order given, each with its parameters (``params[name]``) and the pass's options."""
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(
            f"measures={names}: name each measure once, at least one (e.g. ['cka', 'rsa', 'knn'])"
        )
    unknown = sorted(set(params or {}) - set(names))
    if unknown:
        raise ValueError(f"parameters for {', '.join(unknown)}, which is not among measures={names}")
    check_kernel(engine.get("kernel", "linear"))
    check_precision(engine.get("precision", "exact"))
    built = {n: make_measure(n, dict((params or {}).get(n) or {}), **engine) for n in names}
    declared_pool(built.values())  # one pool size for the pass
    return built


def sub_grams(g: Grams, start: int, stop: int) -> Grams:
    """The Grams of the examples ``start:stop`` of ``g`` (a diagonal block, copied: its user may work in
    place); ``g`` itself when that is all of it."""
    if (start, stop) == (0, g.n):
        return g
    parts = None
    if g.parts is not None:
        parts = type(g.parts)(*(t[..., start:stop] if t.dim() > 1 else t for t in g.parts))
    feats = None if g.features is None else [f[start:stop] for f in g.features]
    return Grams(g.centred[:, start:stop, start:stop].contiguous(), g.sides, parts, feats)


def metric_batches(measure: Measure, plan: PassPlan | None, max_batches: int | None) -> int | None:
    """How many batch ids a measure's metric may see: the plan's units (pooled) or CKA batches, else as given."""
    if plan is None:
        return max_batches
    return plan.n_units if measure.pooled else plan.n_cka_batches


def run_order(measures: Mapping[str, Measure]) -> list[str]:
    """CKA last: its kernel and centring may work in place on the batch's Grams, which the others read."""
    return sorted(measures, key=lambda n: n == "cka")


class _MeasuresPass(Tracking, nn.Module):
    """What both classes share: the measures, their metrics (a ModuleDict: ``.to(device)`` moves them all)."""

    def _setup(
        self, measures: dict[str, Measure], metrics: dict[str, Any], plumbing: Any, plan: PassPlan | None
    ) -> None:
        self.plan = plan
        self._pool_sizes: set[int] = set()
        self.measures = measures
        self.metrics = nn.ModuleDict(metrics)
        self.attach(plumbing)
        for m in self.metrics.values():
            m.activation_dtypes = self.activation_dtypes
        self._order = run_order(measures)
        self._work = torch_dtype(next(iter(measures.values())).engine.get("precision", "exact"))

    @property
    def device(self) -> torch.device:
        return next(iter(self.metrics.values())).device

    def _on_skip(self, batch_id: int) -> None:
        sides = self._pass.sides
        sx, sy = sides if isinstance(sides, tuple) else (sides, None)
        for name in self._order:
            metric = self.metrics[name]
            self.measures[name].skipped(metric, sx, sy, device=metric.device, dtype=self._work)

    def _on_batch(self, gx: Grams, gy: Grams | None, masked: bool, unit: int) -> None:
        plan = self.plan
        for i, name in enumerate(self._order):
            measure, metric = self.measures[name], self.metrics[name]
            if measure.pooled:  # the unit whole, when it is a pool
                if plan is None or plan.is_pool(unit):
                    if not masked:
                        self._pool_sizes.add(gx.n)
                    measure.add(metric, gx, gy, batch_id=unit, masked=masked, last=False)
                continue
            last = i == len(self._order) - 1
            batches = [(0, gx.n, unit)] if plan is None else plan.cka_batches(unit)
            for start, stop, batch_id in batches:
                if stop - start < measure.min_n:
                    warnings.warn(
                        f"{name}: skipped a batch of {stop - start} examples: {measure.min_reason} needs at "
                        f"least {measure.min_n}",
                        stacklevel=2,
                    )
                    self._on_skip_one(name)
                    continue
                bx = sub_grams(gx, start, stop)
                by = None if gy is None else sub_grams(gy, start, stop)
                measure.add(metric, bx, by, batch_id=batch_id, masked=masked, last=last)

    def _on_skip_one(self, name: str) -> None:
        sides = self._pass.sides
        sx, sy = sides if isinstance(sides, tuple) else (sides, None)
        metric = self.metrics[name]
        self.measures[name].skipped(metric, sx, sy, device=metric.device, dtype=self._work)

    def _results(self) -> dict[str, Any]:
        out = {name: self.undefined_as_nan(self.metrics[name].compute()) for name in self.measures}
        for name, measure in self.measures.items():
            if measure.pooled:
                facts = self.plan.facts() if self.plan is not None else self._seen_pools()
                out[name].facts = {**facts, **measure.facts(facts.get("pool_size"))}
        return out

    def _seen_pools(self) -> dict[str, Any]:
        """Without a plan: the pool size when every batch (pool) had the same (this process's batches)."""
        return {"pool_size": next(iter(self._pool_sizes))} if len(self._pool_sizes) == 1 else {}

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()


class StreamingSimilarity(_MeasuresPass):
    """``measures`` between the layers of ``model`` (and of ``other``) in one pass, streamed over batches.

    Args:
        measures: names of registered measures, e.g. ``["cka", "rsa", "knn"]``.
        params: each measure's parameters, e.g. ``{"rsa": {"correlation": "pearson"}, "knn": {"k": 10}}``.
        plan: the pass's :class:`~vvm.cka.pools.PassPlan` (pools for RSA and kNN, CKA's batches within them);
            None: every forward batch is one CKA batch and one pool.
        the others: as :class:`~vvm.cka.streaming.StreamingCKA` (``kernel``, ``estimator``, ``rbf_*`` are
            CKA's; ``precision`` is the recorder's and CKA's).

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
        built = build_measures(measures, params, engine)
        plumbing = StreamingPass(
            model, layers, other=other, other_layers=other_layers, on_batch=self._on_batch,
            on_layers=self._on_layers, on_skip=self._on_skip,
            **recorder_options(built, engine.get("precision", "exact")),
        )  # fmt: skip
        ly = None if plumbing.symmetric else plumbing.modules_y
        metrics = {
            n: m.make_metric(plumbing.modules_x, ly, max_batches=metric_batches(m, plan, max_batches))
            for n, m in built.items()
        }
        self._setup(built, metrics, plumbing, plan)

    def _on_layers(self, layers_x: list[str], layers_y: list[str]) -> None:
        for m in self.metrics.values():
            m.set_layers(layers_x, layers_y)

    def compute(self) -> dict[str, Any]:
        """``{measure: result}``: a :class:`~vvm.cka.result.CKAResult` for ``cka``, a :class:`MeasureResult`
        for the others."""
        return self._results()


class JointSimilarity(JointModels, _MeasuresPass):
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
        self._auto_blocks = block_layers == "auto"
        built = build_measures(
            measures, params, {**engine, "update": self._update} if "cka" in measures else engine
        )
        plumbing = JointPass(
            hook_targets(models), layers, on_batch=self._on_batch,
            on_layers=self._on_layers, on_skip=self._on_skip,
            **recorder_options(built, engine.get("precision", "exact")),
        )  # fmt: skip
        metrics = {
            n: m.make_metric(plumbing.names, None, max_batches=metric_batches(m, plan, max_batches))
            for n, m in built.items()
        }
        if isinstance(metrics.get("cka"), HSICMetric) and not self._auto_blocks:
            metrics["cka"].block_layers = block_layers
        self._models = dict(models)
        self._setup(built, metrics, plumbing, plan)

    def _on_layers(self, names: list[str]) -> None:
        for m in self.metrics.values():
            m.set_layers(names, names)

    def _update(self, metric: HSICMetric, kx: Tensor, ky: Tensor | None, batch_id: int, last: bool) -> None:
        update_joint(metric, kx, batch_id, auto=self._auto_blocks, overwrite=last)

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
