"""CKA of one pair of representations, in one call: :func:`cka` and the kernel matrix it compares, :func:`gram`.

The kernels are those of :mod:`vvm.cka.kernels` (any registered kernel works here as in the streaming passes),
applied to the linear Gram of the centred features; the RBF bandwidth is estimated on the call's own examples
(``rbf_bandwidth="per_batch"``: one call is one batch, and nothing is broadcast under DDP).
"""

from __future__ import annotations

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
from vvm.cka.kernels import check_kernel, make_kernel


def gram(x: Tensor, kernel: str = "linear", *, rbf_frac: float = 1.0, **options: Any) -> Tensor:
    """Kernel matrix ``[n, n]`` of one representation (features are centred first); ``options``: the kernel's
    other keyword options, if it has any."""
    fn = make_kernel(kernel, rbf_frac=rbf_frac, rbf_bandwidth="per_batch", **options)  # checks the name
    k = linear_gram(x)
    assert isinstance(k, Tensor)
    return fn("x", k[None])[0]


def cka(
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "linear",
    estimator: Estimator = "unbiased",
    rbf_frac: float = 1.0,
    **options: Any,
) -> float:
    """CKA of two representations of the same ``n`` examples (``n x d₁`` and ``n x d₂``), in float64.

    Returns NaN when either representation has no self-similarity (e.g. constant features).
    """
    check_kernel(kernel)
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
    k = gram(x.double(), kernel, rbf_frac=rbf_frac, **options)
    l = gram(y.double(), kernel, rbf_frac=rbf_frac, **options)  # noqa: E741
    check_finite(k, "x's kernel")
    check_finite(l, "y's kernel")
    kc = centre_kernel(torch.stack([k, l]), estimator).reshape(2, -1)
    h = kc @ kc.T
    value = cka_from_hsic(h[:1, 1:], h[:1, :1].diagonal(), h[1:, 1:].diagonal())
    return float(value)


__all__ = ["cka", "gram"]
