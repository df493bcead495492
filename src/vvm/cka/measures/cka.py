"""CKA as a measure: each layer's Gram through the kernel, U-centred (or H-centred), every pair's HSIC from one
product ``G_x G_yᵀ`` of the stacked centred kernels, and CKA as the ratio of size-weighted HSIC sums with its
delta-method standard error: :class:`~vvm.cka.metric.HSICMetric`, whose numbers and files this measure leaves
exactly as they were. Its options are the pass's (``cka.kernel``, ``cka.estimator``, ...), not parameters of
its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vvm.cka.functional import check_estimator, min_samples
from vvm.cka.kernels import apply_kernel, make_kernel
from vvm.cka.kernels import kernel_params as kernel_params_of
from vvm.cka.measures.base import Grams, Measure, register_measure
from vvm.cka.precision import check_precision

if (
    TYPE_CHECKING
):  # the metric (torchmetrics) is imported where it is made: the registry lists names without it
    from vvm.cka.metric import HSICMetric

# update(metric, kx, ky, batch_id, may_overwrite): how a batch's kernels reach the metric
Update = Callable[["HSICMetric", Tensor, "Tensor | None", int, bool], None]


def plain_update(
    metric: HSICMetric, kx: Tensor, ky: Tensor | None, batch_id: int, may_overwrite: bool
) -> None:
    metric.update(kx, ky, batch_id=batch_id)


@register_measure
class CKA(Measure):
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) with the kernel object of ``kernel`` (linear, rbf)."""

    name = "cka"
    label = "CKA"

    def __init__(
        self,
        params: Any = None,
        *,
        kernel: str = "linear",
        kernel_params: Mapping[str, Any] | None = None,
        estimator: str = "unbiased",
        precision: str = "exact",
        update: Update | None = None,
        **engine: Any,
    ) -> None:
        params_of_kernel = kernel_params_of(kernel, kernel_params, engine)
        super().__init__(params, precision=precision, **engine)
        check_estimator(estimator)
        check_precision(precision)
        self.kernel = make_kernel(kernel, params_of_kernel)
        self.kernel_name, self.estimator, self.precision = kernel, estimator, precision
        self.update = update or plain_update

    @property
    def min_n(self) -> int:
        return min_samples(self.estimator)

    @property
    def min_reason(self) -> str:
        return f"the {self.estimator} estimator"

    @property
    def title(self) -> str:
        return f"{self.kernel_name} CKA"

    def describe(self) -> dict[str, Any]:
        return {"kernel": self.kernel_name, "estimator": self.estimator}

    def comparable(self, facts: dict[str, Any] | None = None) -> dict[str, Any]:
        """The kernel with its parameters (``cka.<kernel>_<parameter>``, as the files have always named them:
        ``kernel.rbf.frac``), the estimator and the precision."""
        out = {
            "cka.kernel": self.kernel_name,
            "cka.estimator": self.estimator,
            "cka.precision": self.precision,
        }
        out.update({f"cka.{self.kernel_name}_{k}": v for k, v in self.kernel.describe().items()})
        return out

    def metric_options(self) -> dict[str, Any]:
        """What CKA's metric is made with: the kernel's name and facts, the estimator, the precision."""
        return {
            "kernel": self.kernel_name,
            "kernel_facts": self.kernel.facts,
            "estimator": self.estimator,
            "precision": self.precision,
        }

    def make_metric(
        self, layers_x: list[str], layers_y: list[str] | None, *, max_batches: int | None
    ) -> HSICMetric:
        from vvm.cka.metric import HSICMetric

        return HSICMetric(layers_x, layers_y, max_batches=max_batches, **self.metric_options())

    def add(
        self, metric: Any, gx: Grams, gy: Grams | None, *, batch_id: int, masked: bool, last: bool
    ) -> None:
        # also for a masked batch: a fixed RBF bandwidth is fitted (and broadcast under DDP) on the first batch
        kx = apply_kernel(self.kernel, gx.centred, gx.sides, inplace=last)
        ky = None if gy is None else apply_kernel(self.kernel, gy.centred, gy.sides, inplace=last)
        self.record(metric, gx.sides, None if gy is None else gy.sides)
        if not masked:
            self.update(metric, kx, ky, batch_id, last)

    def skipped(
        self,
        metric: Any,
        sides_x: list[tuple[str, int]],
        sides_y: list[tuple[str, int]] | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        for side, count in [*sides_x, *(sides_y or [])]:
            self.kernel.join(side, count, device=device, dtype=dtype)
        self.record(metric, sides_x, sides_y)

    def record(
        self, metric: Any, sides_x: list[tuple[str, int]], sides_y: list[tuple[str, int]] | None
    ) -> None:
        """The kernel's fitted parameters (RBF: σ² per layer) into the metric's result, ``x`` and ``y``."""
        fitted = self.kernel.fitted
        for key, sides in (("x", sides_x), ("y", sides_y)):
            if fitted and sides and all(s in fitted for s, _ in sides):
                metric.sigma2[key] = (
                    fitted[sides[0][0]] if len(sides) == 1 else torch.cat([fitted[s] for s, _ in sides])
                )


__all__ = ["CKA", "plain_update"]
