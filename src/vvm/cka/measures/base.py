"""What a similarity measure is, the registry that names them, and the per-batch input they share.

A measure compares every layer of one stack with every layer of another from one batch's Gram matrices (the
recorder's ``Xc Xcᵀ`` of each layer's centred features, :class:`Grams`), and adds the batch to its metric's
float64 sums. Two kinds:

- :class:`Measure`: any per-batch rule (CKA: kernel, U-centring and one HSIC product, :mod:`.cka`);
- :class:`ProductMeasure`: a per-layer transform of the batch's Grams into one vector per layer, scaled so that
  ONE matrix product of the stacked vectors ``T_x T_yᵀ / normaliser(n)`` holds the batch's value for every pair
  of layers; the batches are averaged with their sizes as weights, with a standard error over batches
  (:class:`~vvm.cka.measures.mean.BatchMeanMetric`). RSA and mutual kNN are two such transforms.

A measure's parameters are a frozen dataclass (``Params``) whose fields are made with :func:`option`: a
default and either the values the parameter may take (a closed choice) or its minimum. vvm's settings are
generated from it (``measure.<name>.<parameter>``, :mod:`vvm.settings.measures`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from vvm.cka.functional import RawParts, raw_gram
from vvm.cka.params import NoParams, check_params, make_params, option
from vvm.cka.registry import Registry

if (
    TYPE_CHECKING
):  # metrics (torchmetrics) are imported where they are made: the registry lists names without them
    from torchmetrics import Metric


@dataclass
class Grams:
    """One batch's linear Grams of a stack of layers.

    ``centred`` ``[L, n, n]`` (the work dtype): ``Xc Xcᵀ`` of each layer's column-centred features;
    ``sides``: the ``(side, layers)`` blocks the stack is made of, in order (``x``/``y`` in a one- or two-model
    pass, one per model in a joint pass: a kernel fits its parameters per side); ``parts``: the
    :class:`~vvm.cka.functional.RawParts` of every layer (``u`` ``[L, n]``, ``mu2`` ``[L]``) when a measure asked
    for the Gram of the raw features; ``features``: every layer's features ``[n, d_l]`` as recorded, when a
    measure asked for them (``needs_features``: PWCCA's weights)."""

    centred: Tensor
    sides: list[tuple[str, int]]
    parts: RawParts | None = None
    features: list[Tensor] | None = None

    @property
    def n(self) -> int:
        return int(self.centred.shape[-1])

    def raw(self) -> Tensor:
        """``X Xᵀ`` of every layer's features as they are, float64 ``[L, n, n]``."""
        if self.parts is None:
            raise RuntimeError(
                "the Gram of the raw features was not recorded: the measure must set needs_raw"
            )
        return raw_gram(self.centred, self.parts)


class Measure:
    """A similarity measure between the layers of two stacks (see the module docstring).

    Subclasses set ``name`` (its key: ``measures=[..., <name>]``, ``<name>.npz``), ``label``, ``Params``, ``needs_raw`` (the
    Gram of the raw features is needed, not only the centred one) and implement :meth:`make_metric` and
    :meth:`add`. ``engine`` holds the pass's options (``precision``; CKA's kernel and estimator)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how tables and figures name it: CKA, RSA, kNN
    Params: ClassVar[type] = NoParams
    needs_raw: ClassVar[bool] = False
    # the Grams computed from the activations in float64 (rank-sensitive measures: the CCA family)
    needs_float64: ClassVar[bool] = False
    # every layer's features themselves kept for the batch (Grams.features; memory: the activations)
    needs_features: ClassVar[bool] = False
    # computed on pools of the declared ``params.n`` examples (:mod:`vvm.cka.pools`), not on CKA's batches
    pooled: ClassVar[bool] = False

    def __init__(self, params: Any = None, **engine: Any) -> None:
        self.params = self.Params() if params is None else params
        self.engine = engine
        check_params(self.name, self.params)

    @classmethod
    def create(cls, params: dict[str, Any] | None = None, **engine: Any) -> Measure:
        """The measure with ``params`` (plain values, e.g. ``{"k": 10}``) and the pass's options."""
        return cls(make_params(cls.name, cls.Params, params, label=f"measure {cls.name!r}"), **engine)

    # ------------------------------------------------------------------ what it needs, what it is called
    @property
    def min_n(self) -> int:
        """The smallest batch the measure is defined on; smaller batches are skipped with a warning."""
        return 2

    @property
    def min_reason(self) -> str:
        return f"{self.name}"

    @property
    def title(self) -> str:
        """How figures name it, e.g. ``RSA (Spearman)``."""
        return self.name

    def describe(self) -> dict[str, Any]:
        """Its parameters as plain values (written into its files and result.json)."""
        return asdict(self.params)

    def comparable(self, facts: dict[str, Any] | None = None) -> dict[str, Any]:
        """What two results of this measure must share to be compared (``vvm.diff``, ``vvm.joint``), keyed as the
        settings name them: its parameters (``measure.<name>.<parameter>``), the pass's precision and, for a
        pooled measure, the examples per pool its result ``facts`` record (``pool_size``). The CKA batch size
        is not among them: it moves no measure's expectation."""
        out: dict[str, Any] = {f"measure.{self.name}.{k}": v for k, v in self.describe().items()}
        out["cka.precision"] = self.engine.get("precision", "exact")
        if self.pooled and facts and "pool_size" in facts:
            out["pool_size"] = int(facts["pool_size"])
        return out

    def facts(self, pool_size: int | None) -> dict[str, Any]:
        """What its files say beside its parameters, given the examples per pool (kNN: the chance level)."""
        return {}

    # ------------------------------------------------------------------ per batch
    def make_metric(
        self, layers_x: list[str], layers_y: list[str] | None, *, max_batches: int | None
    ) -> Metric:
        """The metric that holds its sums for these rows and columns (``layers_y=None``: the columns are the
        rows and the batches come as one stack)."""
        raise NotImplementedError

    def add(
        self, metric: Metric, gx: Grams, gy: Grams | None, *, batch_id: int, masked: bool, last: bool
    ) -> None:
        """One batch into ``metric``: ``gy=None`` when the columns are the rows; ``masked``: a padding batch
        (DDP) that must add nothing; ``last``: no measure reads ``gx``/``gy`` after this one (it may overwrite)."""
        raise NotImplementedError

    def skipped(
        self,
        metric: Metric,
        sides_x: list[tuple[str, int]],
        sides_y: list[tuple[str, int]] | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """The recorder skipped a batch as too small (nothing to add; CKA's RBF kernel still joins DDP)."""


class ProductMeasure(Measure):
    """A measure whose batch value for layers ``i, j`` is ``⟨t_i, t_j⟩ / normaliser(n)``, ``t`` the per-layer
    :meth:`transform` of the Grams, or, with ``cosine = True``, ``⟨t_i, t_j⟩ / (‖t_i‖ ‖t_j‖)`` (a correlation when
    the rows are centred; the norms come from the same product, so a layer against itself gives exactly 1, and
    a row of zeros is undefined). Batches are averaged (weights: their sizes) with a standard error."""

    cosine: ClassVar[bool] = False

    def transform(self, grams: Grams) -> tuple[Tensor, Tensor]:
        """``(T, defined)``: ``T`` ``[L, m]`` one row per layer, ``defined`` ``[L]`` (bool) whether the layer
        has a value in this batch (a constant layer has none)."""
        raise NotImplementedError

    def normaliser(self, n: int) -> float:
        return 1.0

    def values(self, tx: Tensor, ty: Tensor | None, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The batch's ``[L_x, L_y]`` values from one product, and (cosine) which rows and columns are nonzero."""
        prod = tx @ (tx if ty is None else ty).T
        if not self.cosine:
            return prod / self.normaliser(n), None, None
        sx = prod.diagonal() if ty is None else (tx * tx).sum(-1)
        sy = sx if ty is None else (ty * ty).sum(-1)
        denom = torch.sqrt(sx[:, None] * sy[None, :])
        out = prod / torch.where(denom > 0, denom, torch.ones_like(denom))
        return out, sx > 0, sy > 0

    def make_metric(
        self, layers_x: list[str], layers_y: list[str] | None, *, max_batches: int | None
    ) -> Metric:
        from vvm.cka.measures.mean import BatchMeanMetric

        return BatchMeanMetric(
            layers_x, layers_y, measure=self.name, params=self.describe(), max_batches=max_batches
        )

    def add(
        self, metric: Metric, gx: Grams, gy: Grams | None, *, batch_id: int, masked: bool, last: bool
    ) -> None:
        if masked:
            return
        n = gx.n
        if n < self.min_n:
            warnings.warn(
                f"{self.name}: skipped a batch of {n} examples: {self.min_reason} needs at least {self.min_n}",
                stacklevel=3,
            )
            return
        metric.update(weight=float(n), batch_id=batch_id, **self.batch_values(gx, gy))

    def batch_values(self, gx: Grams, gy: Grams | None) -> dict[str, Tensor]:
        """The batch's ``values`` ``[L_x, L_y]`` and which layers are defined (``defined_x``/``defined_y``):
        :meth:`transform` of each side and one product (:meth:`values`)."""
        tx, dx = self.transform(gx)
        ty, dy = (None, dx) if gy is None else self.transform(gy)
        values, nx, ny = self.values(tx, ty, gx.n)
        if nx is not None and ny is not None:
            dx, dy = dx & nx, dy & ny
        return {"values": values, "defined_x": dx, "defined_y": dy}


# the measures by name (``measures=[...]``, the settings, the files); ``@register_measure`` adds one
MEASURES: Registry[Measure] = Registry("measure")
register_measure = MEASURES.register


def make_measure(name: str, params: dict[str, Any] | None = None, **engine: Any) -> Measure:
    """The registered measure ``name`` with its parameters and the pass's options."""
    MEASURES.check(name)
    return MEASURES[name].create(params, **engine)


__all__ = [
    "MEASURES",
    "Grams",
    "Measure",
    "NoParams",
    "ProductMeasure",
    "check_params",
    "make_measure",
    "option",
    "register_measure",
]
