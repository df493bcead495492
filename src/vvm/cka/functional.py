"""The CKA math as plain functions on tensors (no hooks, no state).

Conventions: a representation is an ``n x d`` matrix (any trailing shape is flattened); a kernel matrix is
``n x n``; batched kernel stacks are ``[..., n, n]``.

- Linear kernel ``K = Xc Xcᵀ`` of the column-centred features ``Xc`` (centring first removes the catastrophic
  cancellation that a large mean offset causes in float32; HSIC is unchanged by it).
- RBF kernel ``K_ij = exp(-‖x_i - x_j‖² / (2 σ²))`` with ``σ² = frac² · median`` of the squared pairwise
  distances (Kornblith et al. 2019).
- Unbiased HSIC₁ (Song et al. 2012) via U-centring (Székely & Rizzo 2014):
  ``HSIC₁(K, L) = ⟨K̃, L̃⟩_F / (n (n - 3))``, needs ``n ≥ 4``.
- Biased HSIC₀ ``= tr(K H L H) / (n - 1)² = ⟨HKH, HLH⟩_F / (n - 1)²`` with ``H = I - 11ᵀ/n``.
- ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``; undefined (NaN) when a self-HSIC is ≤ 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Kernel = Literal["linear", "rbf"]
Estimator = Literal["unbiased", "biased"]
KERNELS = ("linear", "rbf")
ESTIMATORS = ("unbiased", "biased")


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not supported: use one of {', '.join(KERNELS)}")


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is not supported: use one of {', '.join(ESTIMATORS)}")


def min_samples(estimator: str) -> int:
    """Smallest batch the estimator is defined on: U-centring divides by n-3, H-centring by n-1."""
    return 4 if estimator == "unbiased" else 2


def flatten_features(x: Tensor) -> Tensor:
    """``[n, ...] -> [n, d]``."""
    if x.dim() == 0:
        raise ValueError("a representation needs a batch dimension, got a scalar")
    return x.reshape(x.shape[0], -1)


def centre_columns(x: Tensor) -> Tensor:
    """``X - 1 meanᵀ``: subtract the batch mean of every feature.

    The first row is subtracted before the mean: that is exact for features that are the same in every example
    (a constant layer becomes exactly 0, so its CKA is NaN rather than rounding noise) and takes most of a large
    offset out before the mean is rounded.
    """
    xs = x - x[:1]
    return xs - xs.mean(dim=0, keepdim=True)


def linear_gram(x: Tensor, *, chunk_elements: int | None = None) -> Tensor:
    """Linear kernel ``Xc Xcᵀ`` of the column-centred, flattened features, in ``x``'s dtype.

    With ``chunk_elements`` the features are centred and multiplied in column blocks of about that many
    elements, ``K = Σ_blocks Xc[:, B] Xc[:, B]ᵀ``: the extra memory is one block instead of a copy of the whole
    activation, and on a CPU the block stays in cache between centring and product (several times faster than
    centring the whole matrix first). Column blocks change nothing in the result but the summation order.
    """
    x = flatten_features(x)
    n, d = x.shape
    cols = d if chunk_elements is None else max(1, min(d, chunk_elements // max(n, 1)))
    if cols >= d:
        xc = centre_columns(x)
        return xc @ xc.T
    k = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    for start in range(0, d, cols):
        xc = centre_columns(x[:, start : start + cols])
        k.addmm_(xc, xc.T)
    return k


def median_offdiagonal(d2: Tensor) -> Tensor:
    """Median (mean of the two middle values for an even count) of the strict upper triangle of ``d2``."""
    n = d2.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=d2.device)
    vals = d2[iu[0], iu[1]]
    m = vals.numel()
    lo = vals.kthvalue((m + 1) // 2).values
    hi = vals.kthvalue(m // 2 + 1).values
    return (lo + hi) / 2


def rbf_from_linear(k: Tensor, frac: float = 1.0) -> Tensor:
    """RBF kernel from the linear Gram ``K = Xc Xcᵀ`` of the same features.

    ``‖x_i - x_j‖² = K_ii + K_jj - 2 K_ij``; ``σ² = frac² · median`` of the off-diagonal squared distances.
    When that median is 0 (at least half the examples coincide) the kernel is its σ → 0 limit,
    ``K_ij = [x_i = x_j]``, never a division by zero.
    """
    if frac <= 0:
        raise ValueError(f"rbf_frac={frac} must be > 0")
    sq = k.diagonal()
    # squared distances are ≥ 0; rounding in K_ii + K_jj - 2K_ij can leave values of order -eps·K_ii
    d2 = (sq[:, None] + sq[None, :] - 2 * k).clamp_min_(0)
    d2.fill_diagonal_(0)
    sigma2 = frac**2 * median_offdiagonal(d2)
    if sigma2 > 0:
        return torch.exp(d2 / (-2 * sigma2))
    return (d2 == 0).to(k.dtype)


def gram(x: Tensor, kernel: Kernel = "linear", *, rbf_frac: float = 1.0) -> Tensor:
    """Kernel matrix of one representation (features are centred first)."""
    check_kernel(kernel)
    k = linear_gram(x)
    return rbf_from_linear(k, rbf_frac) if kernel == "rbf" else k


def u_centre(k: Tensor) -> Tensor:
    """U-centring of (a stack of) symmetric kernel matrices ``[..., n, n]`` (Székely & Rizzo 2014).

    Zero the diagonal, then ``K̃_ij = K_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` for ``i ≠ j``
    with ``r`` the row sums and ``s`` the total of the zero-diagonal ``K``; ``K̃_ii = 0``.
    """
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"U-centring needs n >= 4 examples, got n={n}")
    k = k.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    r = k.sum(dim=-1)
    s = r.sum(dim=-1)
    out = k - r[..., :, None] / (n - 2) - r[..., None, :] / (n - 2)
    out += (s / ((n - 1) * (n - 2)))[..., None, None]
    out.diagonal(dim1=-2, dim2=-1).zero_()
    return out


def h_centre(k: Tensor) -> Tensor:
    """Double centring ``H K H`` with ``H = I - 11ᵀ/n`` for (a stack of) kernel matrices ``[..., n, n]``."""
    row = k.mean(dim=-1, keepdim=True)
    col = k.mean(dim=-2, keepdim=True)
    return k - row - col + k.mean(dim=(-2, -1), keepdim=True)


def centre_kernel(k: Tensor, estimator: Estimator) -> Tensor:
    check_estimator(estimator)
    return u_centre(k) if estimator == "unbiased" else h_centre(k)


def hsic_normaliser(n: int, estimator: Estimator) -> float:
    """The divisor of ``⟨K̃, L̃⟩_F``: ``n(n-3)`` (unbiased) or ``(n-1)²`` (biased)."""
    return float(n * (n - 3)) if estimator == "unbiased" else float((n - 1) ** 2)


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """Unbiased HSIC₁ (Song et al. 2012): ``⟨K̃, L̃⟩_F / (n (n - 3))`` with U-centred ``K̃, L̃``."""
    n = k.shape[-1]
    return (u_centre(k) * u_centre(l)).sum(dim=(-2, -1)) / hsic_normaliser(n, "unbiased")


def hsic_biased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """Biased HSIC₀ (Gretton et al. 2005): ``tr(K H L H) / (n - 1)²``."""
    n = k.shape[-1]
    return (h_centre(k) * l).sum(dim=(-2, -1)) / hsic_normaliser(n, "biased")


def hsic(k: Tensor, l: Tensor, estimator: Estimator = "unbiased") -> Tensor:  # noqa: E741
    check_estimator(estimator)
    return hsic_unbiased(k, l) if estimator == "unbiased" else hsic_biased(k, l)


def cka_from_hsic(hsic_xy: Tensor, hsic_xx: Tensor, hsic_yy: Tensor) -> Tensor:
    """``HSIC_xy / sqrt(HSIC_xx ⊗ HSIC_yy)``; entries whose self-HSIC is ≤ 0 are NaN (undefined), never 0."""
    hsic_xx = hsic_xx.to(hsic_xy.dtype)
    hsic_yy = hsic_yy.to(hsic_xy.dtype)
    denom = torch.sqrt(hsic_xx.clamp_min(0)[:, None] * hsic_yy.clamp_min(0)[None, :])
    out = hsic_xy / denom
    undefined = (hsic_xx <= 0)[:, None] | (hsic_yy <= 0)[None, :]
    return out.masked_fill(undefined, math.nan)


def cka(
    x: Tensor,
    y: Tensor,
    *,
    kernel: Kernel = "linear",
    estimator: Estimator = "unbiased",
    rbf_frac: float = 1.0,
) -> float:
    """CKA of two representations of the same ``n`` examples (``n x d₁`` and ``n x d₂``), in float64.

    Returns NaN when either representation has no self-similarity (e.g. constant features).
    """
    check_kernel(kernel)
    check_estimator(estimator)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples: got n={x.shape[0]} and n={y.shape[0]}")
    n = x.shape[0]
    if n < min_samples(estimator):
        raise ValueError(f"the {estimator} estimator needs n >= {min_samples(estimator)} examples, got n={n}")
    k = gram(x.double(), kernel, rbf_frac=rbf_frac)
    l = gram(y.double(), kernel, rbf_frac=rbf_frac)  # noqa: E741
    kc = centre_kernel(torch.stack([k, l]), estimator).reshape(2, -1)
    h = kc @ kc.T
    value = cka_from_hsic(h[:1, 1:], h[:1, :1].diagonal(), h[1:, 1:].diagonal())
    return float(value)
