"""CKA as a measure: each layer's Gram through the kernel, U-centred (or H-centred), every pair's HSIC from one
product ``G_x G_yᵀ`` of the stacked centred kernels, and CKA as the ratio of size-weighted HSIC sums with its
delta-method standard error: :class:`~vvm.cka.metric.HSICMetric`, whose numbers and files this measure leaves
exactly as they were. Its options are the pass's (``cka.kernel``, ``cka.estimator``, ...), not parameters of
its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from vvm.cka.functional import check_estimator, min_samples
from vvm.cka.kernels import KERNELS, apply_kernel, check_kernel, make_kernel
from vvm.cka.measures.base import Grams, Measure, register_measure
from vvm.cka.metric import HSICMetric, check_precision
from vvm.cka.params import make_params

# update(metric, kx, ky, batch_id, may_overwrite): how a batch's kernels reach the metric
Update = Callable[[HSICMetric, Tensor, "Tensor | None", int, bool], None]


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
        estimator: str = "unbiased",
        precision: str = "exact",
        rbf_frac: float = 1.0,
        rbf_bandwidth: str = "fixed",
        update: Update | None = None,
        kernel_params: dict[str, Any] | None = None,
        **engine: Any,
    ) -> None:
        super().__init__(params, precision=precision, **engine)
        check_estimator(estimator)
        check_precision(precision)
        options: dict[str, Any] = {"rbf_frac": rbf_frac, "rbf_bandwidth": rbf_bandwidth}
        if (
            kernel_params
        ):  # kernel.<name>.* (the kernel's Params), to its keywords <name>_<param>: until wt-26b
            check_kernel(kernel)
            own = make_params(f"kernel.{kernel}", KERNELS[kernel].Params, kernel_params)
            options.update({f"{kernel}_{f.name}": getattr(own, f.name) for f in fields(own)})
            rbf_frac, rbf_bandwidth = options["rbf_frac"], options["rbf_bandwidth"]
        self.kernel = make_kernel(kernel, **options)
        self.kernel_name, self.estimator, self.precision = kernel, estimator, precision
        self.rbf_bandwidth = rbf_bandwidth
        self.kernel_options = {"rbf_frac": rbf_frac}
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
        """The kernel (with the RBF's bandwidth rule), the estimator and the precision."""
        out = {
            "cka.kernel": self.kernel_name,
            "cka.estimator": self.estimator,
            "cka.precision": self.precision,
        }
        if self.kernel_name == "rbf":
            out.update(
                {"cka.rbf_frac": self.kernel_options.get("rbf_frac"), "cka.rbf_bandwidth": self.rbf_bandwidth}
            )
        return out

    def make_metric(
        self, layers_x: list[str], layers_y: list[str] | None, *, max_batches: int | None
    ) -> HSICMetric:
        metric = HSICMetric(
            layers_x, layers_y, kernel=self.kernel_name, estimator=self.estimator, precision=self.precision,
            max_batches=max_batches,
        )  # fmt: skip
        metric.rbf_bandwidth = self.rbf_bandwidth
        return metric

    def add(
        self, metric: Any, gx: Grams, gy: Grams | None, *, batch_id: int, masked: bool, last: bool
    ) -> None:
        # also for a masked batch: a fixed RBF bandwidth is fitted (and broadcast under DDP) on the first batch
        kx = apply_kernel(self.kernel, gx.centred, gx.sides, inplace=last)
        ky = None if gy is None else apply_kernel(self.kernel, gy.centred, gy.sides, inplace=last)
        self.record(metric, gx.sides, None if gy is None else gy.sides)
        if not masked:
            self.update(metric, kx, ky, batch_id, last)

    def skipped(self, metric: Any, sides_x: list[tuple[str, int]], sides_y: list[tuple[str, int]] | None, *,
                device: torch.device, dtype: torch.dtype) -> None:  # fmt: skip
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
