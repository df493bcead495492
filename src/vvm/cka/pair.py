"""CKA of one pair of representations, in one call: :func:`cka` and the kernel matrix it compares, :func:`gram`.

The kernels are those of :mod:`vvm.cka.kernels` (any registered kernel works here as in the streaming passes),
applied to the linear Gram of the centred features with ``kernel_params`` (e.g. ``{"frac": 0.5}`` for ``rbf``); a
kernel that fits parameters fits them on the call's own examples (:meth:`~vvm.cka.kernels.Kernel.single`: one call
is one batch, and nothing is shared under DDP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from vvm.cka.functional import (
    Estimator,
    as_tensor,
    centre_kernel,
    check_estimator,
    check_finite,
    cka_from_hsic,
    linear_gram,
    min_samples,
)
from vvm.cka.kernels import kernel_params as kernel_params_of
from vvm.cka.kernels import make_kernel, unexpected


def gram(
    x: Tensor, kernel: str = "linear", *, kernel_params: Mapping[str, Any] | None = None, **deprecated: Any
) -> Tensor:
    """Kernel matrix ``[n, n]`` of one representation (features are centred first), with the kernel's
    parameters ``kernel_params``."""
    fn = make_kernel(
        kernel, kernel_params_of(kernel, kernel_params, deprecated)
    )  # checks name and parameters
    unexpected(deprecated)
    k = linear_gram(x)
    assert isinstance(k, Tensor)
    return fn.single(k[None])[0]


def cka(
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "linear",
    kernel_params: Mapping[str, Any] | None = None,
    estimator: Estimator = "unbiased",
    **deprecated: Any,
) -> float:
    """CKA of two representations of the same ``n`` examples (``n x d₁`` and ``n x d₂``), in float64, with the
    kernel ``kernel`` and its parameters ``kernel_params`` (e.g. ``kernel="rbf", kernel_params={"frac": 0.5}``).

    Returns NaN when either representation has no self-similarity (e.g. constant features).
    """
    kernel_params = kernel_params_of(kernel, kernel_params, deprecated)
    unexpected(deprecated)
    make_kernel(kernel, kernel_params)  # checks the name and the parameters before any work
    check_estimator(estimator)
    x, y = as_tensor(x), as_tensor(y)
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError(
            "cka() needs representations with a batch dimension (n examples first), got a 0-d scalar"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples: got n={x.shape[0]} and n={y.shape[0]}")
    n = x.shape[0]
    if n < min_samples(estimator):
        raise ValueError(f"the {estimator} estimator needs n >= {min_samples(estimator)} examples, got n={n}")
    check_finite(x.double(), "x's features")
    check_finite(y.double(), "y's features")
    k = gram(x.double(), kernel, kernel_params=kernel_params)
    l = gram(y.double(), kernel, kernel_params=kernel_params)  # noqa: E741
    check_finite(k, "x's kernel")
    check_finite(l, "y's kernel")
    kc = centre_kernel(torch.stack([k, l]), estimator).reshape(2, -1)
    h = kc @ kc.T
    value = cka_from_hsic(h[:1, 1:], h[:1, :1].diagonal(), h[1:, 1:].diagonal())
    return float(value)


__all__ = ["cka", "gram"]
