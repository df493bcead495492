"""The one pass implementation: a recorder's pass (:mod:`vvm.cka.passes`) and the measures its batches go to.

:class:`MeasuresPass` is what :class:`~vvm.cka.similarity.StreamingSimilarity`,
:class:`~vvm.cka.similarity.JointSimilarity` and their CKA views :class:`~vvm.cka.streaming.StreamingCKA` and
:class:`~vvm.cka.joint.JointCKA` (``measures=["cka"]``) all run: the measures built and checked once
(:func:`build_measures`, the kernel's parameters among the pass's options), the recorder's pass with the options
they need, and per batch the Grams to every measure in :func:`run_order`; with a
:class:`~vvm.cka.pools.PassPlan` the pooled measures (RSA, kNN) take each pool whole and the others CKA's
balanced batches inside it. Its owner holds the metrics as ``metrics`` (``{measure: metric}``): one metric per
measure in a ``ModuleDict`` (the similarity classes), or the owner itself, CKA's metric (the views).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from vvm.cka.kernels import check_kernel
from vvm.cka.kernels import kernel_params as kernel_params_of
from vvm.cka.measures.base import Grams, Measure, make_measure
from vvm.cka.passes import JointPass, StreamingPass, Tracking, recorder_options, torch_dtype
from vvm.cka.pools import PassPlan, declared_pool
from vvm.cka.precision import check_precision
from vvm.cka.presets import LayerSpec

Params = Mapping[str, Mapping[str, Any]]


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


def cka_options(
    kernel: str,
    kernel_params: Mapping[str, Any] | None,
    estimator: str,
    precision: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The pass's options of a CKA view (:class:`~vvm.cka.StreamingCKA`, :class:`~vvm.cka.JointCKA`), the
    deprecated kernel keywords taken out of ``options`` (the rest are the metric's)."""
    params = kernel_params_of(kernel, kernel_params, options)
    return {"kernel": kernel, "kernel_params": params, "estimator": estimator, "precision": precision}


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


class MeasuresPass(Tracking):
    """The pass's measures and what each batch does to their metrics (see the module docstring). The owner
    builds its parts with :meth:`_streaming_parts` (or ``JointModels._joint_parts``), makes the metrics, then
    calls :meth:`_start`."""

    measures: dict[str, Measure]
    metrics: Mapping[str, Any]
    plan: PassPlan | None

    def _streaming_parts(
        self,
        model: nn.Module,
        layers: LayerSpec,
        other: nn.Module | None,
        other_layers: LayerSpec | None,
        measures: Sequence[str],
        params: Params | None,
        engine: dict[str, Any],
    ) -> tuple[dict[str, Measure], StreamingPass]:
        """The measures and the recorder's pass over ``model`` (and ``other``)."""
        built = build_measures(measures, params, engine)
        plumbing = StreamingPass(
            model,
            layers,
            other=other,
            other_layers=other_layers,
            on_batch=self._on_batch,
            on_layers=self._on_layers,
            on_skip=self._on_skip,
            **recorder_options(built, engine.get("precision", "exact")),
        )
        return built, plumbing

    def _start(
        self, measures: dict[str, Measure], plumbing: StreamingPass | JointPass, plan: PassPlan | None
    ) -> None:
        self.plan = plan
        self._pool_sizes: set[int] = set()
        self.measures = measures
        self.attach(plumbing)
        for m in self.metrics.values():
            m.activation_dtypes = self.activation_dtypes
        self._order = run_order(measures)
        self._work = torch_dtype(next(iter(measures.values())).engine.get("precision", "exact"))

    # ------------------------------------------------------------------ per batch
    def _on_layers(self, layers_x: list[str], layers_y: list[str] | None = None) -> None:
        """The first batch renamed the layers (a module that runs twice); a joint pass gives one list."""
        for m in self.metrics.values():
            m.set_layers(layers_x, layers_x if layers_y is None else layers_y)

    def _on_skip(self, batch_id: int) -> None:
        for name in self._order:
            self._on_skip_one(name)

    def _on_skip_one(self, name: str) -> None:
        """Nothing to add, but CKA's kernel still joins a fixed RBF bandwidth's broadcast."""
        sides = self._pass.sides
        sx, sy = sides if isinstance(sides, tuple) else (sides, None)
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


__all__ = ["MeasuresPass", "build_measures", "cka_options", "metric_batches", "run_order", "sub_grams"]
