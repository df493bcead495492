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
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

Estimator = Literal["unbiased", "biased"]
ESTIMATORS = ("unbiased", "biased")


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is not supported: use one of {', '.join(ESTIMATORS)}")


def min_samples(estimator: str) -> int:
    """Smallest batch the estimator is defined on: U-centring divides by n-3, H-centring by n-1."""
    return 4 if estimator == "unbiased" else 2


def as_tensor(x: Any) -> Tensor:
    """A tensor from a tensor, a numpy array or a nested list (numpy inputs are accepted everywhere)."""
    if isinstance(x, Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


def representation(out: object) -> Tensor | None:
    """The representation in a module's output: the output itself, or the first tensor with a batch dimension
    in a tuple, list or dict (0-d entries such as a loss are passed over); None when there is none."""
    items = [out] if isinstance(out, Tensor) else []
    if isinstance(out, (tuple, list)):
        items = list(out)
    elif isinstance(out, dict):
        items = list(out.values())
    return next((t for t in items if isinstance(t, Tensor) and t.dim() > 0), None)


def flatten_features(x: Tensor) -> Tensor:
    """``[n, ...] -> [n, d]``."""
    if x.dim() == 0:
        raise ValueError("a representation needs a batch dimension (n examples first), got a 0-d scalar")
    return x.reshape(x.shape[0], -1)


def check_finite(x: Tensor, what: str = "features") -> None:
    """NaN/inf features have no kernel: an error, never a silent NaN that looks like a constant layer."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{what} hold NaN or inf values (or values too large to square in {x.dtype}); CKA is not defined "
            "for them: check the inputs or the layer"
        )


def centre_columns(x: Tensor) -> Tensor:
    """``X - 1 meanᵀ``: subtract the batch mean of every feature.

    The first row is subtracted before the mean: that is exact for features that are the same in every example
    (a constant layer becomes exactly 0, so its CKA is NaN rather than rounding noise) and takes most of a large
    offset out before the mean is rounded.
    """
    return _centred(x)[0]


def _centred(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(Xc, m)``: the centred features (:func:`centre_columns`) and the mean ``m`` of ``X - x_0``, so that the
    column mean of ``X`` is ``x_0 + m``."""
    xs = x - x[:1]
    m = xs.mean(dim=0, keepdim=True)
    return xs.sub_(m), m  # in place: one copy of the activation, not two


class RawParts(NamedTuple):
    """What rebuilds the Gram of the raw features from the centred one: ``X = Xc + 1μᵀ`` with ``μ`` the feature
    mean gives ``X Xᵀ = Xc Xcᵀ + u1ᵀ + 1uᵀ + ‖μ‖² 11ᵀ``, ``u = Xc μ`` (float64, ``[n]``), ``mu2 = ‖μ‖²``; ``sq``
    (float64, ``[n]``) the squared norms ``‖x_i‖²`` summed directly, the Gram's diagonal without the rounding of
    the sum (an all-zero example has exactly 0); ``rs`` (float64, ``[n]``) each example's sum over its features and
    ``d`` (float64, ``[]``) the number of features: the row means that correlation distances centre by."""

    u: Tensor
    mu2: Tensor
    sq: Tensor
    rs: Tensor
    d: Tensor


def _add_lower(k: Tensor, xc: Tensor, row_blocks: int) -> None:
    """``k += xc xcᵀ`` on the blocks on and below the diagonal of ``row_blocks`` row blocks (about half the work
    of the full product for many blocks); :func:`linear_gram` mirrors the lower triangle at the end."""
    n = xc.shape[0]
    edges = [round(i * n / row_blocks) for i in range(row_blocks + 1)]
    for a, b in zip(edges[:-1], edges[1:]):
        k[a:b, :b].addmm_(xc[a:b], xc[:b].T)


def linear_gram(
    x: Tensor, *, chunk_elements: int | None = None, raw: bool = False, row_blocks: int = 1
) -> Tensor | tuple[Tensor, RawParts]:
    """Linear kernel ``Xc Xcᵀ`` of the column-centred, flattened features, in ``x``'s dtype.

    With ``chunk_elements`` the features are centred and multiplied in column blocks of about that many
    elements, ``K = Σ_blocks Xc[:, B] Xc[:, B]ᵀ``: the extra memory is one block instead of a copy of the whole
    activation, and on a CPU the block stays in cache between centring and product (several times faster than
    centring the whole matrix first). Column blocks change nothing in the result but the summation order.
    ``raw``: also the :class:`RawParts` of the raw features' Gram, from the same centred blocks in float64
    (more accurate than a Gram of the raw features, whose mean can dwarf what tells the examples apart).
    ``row_blocks > 1``: only the blocks on and below the diagonal of that many row blocks are computed and the
    lower triangle mirrored (a pool's large Gram, :mod:`vvm.cka.pools`: about half the work); 1: the full product.
    """
    x = flatten_features(x)
    n, d = x.shape
    cols = d if chunk_elements is None else max(1, min(d, chunk_elements // max(n, 1)))
    zeros = x.new_zeros(n, dtype=torch.float64)
    scalar = x.new_zeros((), dtype=torch.float64)
    parts = RawParts(zeros, scalar, zeros.clone(), zeros.clone(), scalar + d) if raw else None
    k = None
    for start in range(0, max(d, 1), max(cols, 1)):
        xc, m = _centred(x if cols >= d else x[:, start : start + cols])
        if row_blocks > 1:
            k = torch.zeros(n, n, dtype=x.dtype, device=x.device) if k is None else k
            _add_lower(k, xc, row_blocks)
        elif cols >= d:
            k = xc @ xc.T
        else:
            k = torch.zeros(n, n, dtype=x.dtype, device=x.device) if k is None else k
            k.addmm_(xc, xc.T)
        if parts is not None:
            block = (x if cols >= d else x[:, start : start + cols]).double()
            mu = block[0] + m[0].double()
            parts.u.add_(xc.double() @ mu)
            parts.mu2.add_(mu @ mu)
            parts.sq.add_((block * block).sum(dim=1))
            parts.rs.add_(block.sum(dim=1))
    assert k is not None
    if row_blocks > 1:
        k = k.tril() + k.tril(-1).T
    return k if parts is None else (k, parts)


def raw_gram(k: Tensor, parts: RawParts) -> Tensor:
    """The Gram ``X Xᵀ`` of the raw features from the centred Gram ``k`` and its :class:`RawParts` (stacks
    ``[..., n, n]`` with ``u`` ``[..., n]`` and ``mu2`` ``[...]`` too), in float64."""
    u, mu2 = parts.u.double(), parts.mu2.double()
    out = k.double() + u[..., :, None] + u[..., None, :] + mu2[..., None, None]
    out.diagonal(dim1=-2, dim2=-1).copy_(parts.sq)
    return out


def median_offdiagonal(d2: Tensor) -> Tensor:
    """Median (mean of the two middle values for an even count) of the strict upper triangle of ``d2``."""
    n = d2.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=d2.device)
    vals = d2[iu[0], iu[1]]
    m = vals.numel()
    lo = vals.kthvalue((m + 1) // 2).values
    hi = vals.kthvalue(m // 2 + 1).values
    return (lo + hi) / 2


def squared_distances(k: Tensor) -> Tensor:
    """``‖x_i - x_j‖² = K_ii + K_jj - 2 K_ij`` from (a stack of) linear Grams ``[..., n, n]``."""
    sq = k.diagonal(dim1=-2, dim2=-1)
    # squared distances are ≥ 0; rounding in K_ii + K_jj - 2K_ij can leave values of order -eps·K_ii
    d2 = (sq[..., :, None] + sq[..., None, :] - 2 * k).clamp_min_(0)
    d2.diagonal(dim1=-2, dim2=-1).zero_()
    return d2


def rbf_sigma2(k: Tensor, frac: float = 1.0) -> Tensor:
    """The median-heuristic bandwidth ``σ² = frac² · median`` of the off-diagonal squared distances, per kernel
    of a stack ``[L, n, n]`` of linear Grams (returns ``[L]``) or for one Gram (returns a 0-d tensor)."""
    if not frac > 0:
        raise ValueError(f"frac={frac} must be a number > 0")
    d2 = squared_distances(k)
    if d2.dim() == 2:
        return frac**2 * median_offdiagonal(d2)
    return torch.stack([frac**2 * median_offdiagonal(m) for m in d2])


def rbf_kernels(k: Tensor, sigma2: Tensor) -> Tensor:
    """RBF kernels ``exp(-‖x_i - x_j‖² / (2σ²))`` from a stack of linear Grams ``[L, n, n]`` and ``σ²`` ``[L]``.

    Where ``σ² = 0`` (at least half the examples coincide) the kernel is its σ → 0 limit ``[x_i = x_j]``, never a
    division by zero.
    """
    d2 = squared_distances(k)
    s2 = sigma2.to(d2.dtype).reshape(-1, *([1] * (d2.dim() - 1))) if d2.dim() == 3 else sigma2.to(d2.dtype)
    safe = torch.where(s2 > 0, s2, torch.ones_like(s2))
    return torch.where(s2 > 0, torch.exp(d2 / (-2 * safe)), (d2 == 0).to(d2.dtype))


def rbf_from_linear(k: Tensor, frac: float = 1.0, sigma2: Tensor | float | None = None) -> Tensor:
    """RBF kernel from the linear Gram ``K = Xc Xcᵀ`` of the same features, with ``σ²`` given or, by default,
    ``frac² · median`` of this Gram's off-diagonal squared distances (Kornblith et al. 2019)."""
    s2 = rbf_sigma2(k, frac) if sigma2 is None else torch.as_tensor(sigma2, dtype=k.dtype, device=k.device)
    return rbf_kernels(k, s2)


def u_centre(k: Tensor, *, inplace: bool = False) -> Tensor:
    """U-centring of (a stack of) symmetric kernel matrices ``[..., n, n]`` (Székely & Rizzo 2014).

    Zero the diagonal, then ``K̃_ij = K_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` for ``i ≠ j``
    with ``r`` the row sums and ``s`` the total of the zero-diagonal ``K``; ``K̃_ii = 0``. The result is one new
    stack (``inplace``: ``k`` itself, overwritten), built in place: no other temporary of ``k``'s size.
    """
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"U-centring needs n >= 4 examples, got n={n}")
    out = k if inplace else k.clone()
    out.diagonal(dim1=-2, dim2=-1).zero_()
    r = out.sum(dim=-1)
    c = (r.sum(dim=-1) / ((n - 1) * (n - 2)))[..., None, None]
    r /= n - 2
    # from here on nothing is allocated: an in-place centring cannot stop half-way for want of memory
    out -= r[..., :, None]
    out -= r[..., None, :]
    out += c
    out.diagonal(dim1=-2, dim2=-1).zero_()
    return out


def h_centre(k: Tensor, *, inplace: bool = False) -> Tensor:
    """Double centring ``H K H`` with ``H = I - 11ᵀ/n`` for (a stack of) kernel matrices ``[..., n, n]``: one
    new stack (``inplace``: ``k`` itself, overwritten)."""
    row = k.mean(dim=-1, keepdim=True)
    col = k.mean(dim=-2, keepdim=True)
    total = k.mean(dim=(-2, -1), keepdim=True)
    out = k if inplace else k.clone()
    return out.sub_(row).sub_(col).add_(total)


def centre_kernel(k: Tensor, estimator: Estimator, *, inplace: bool = False) -> Tensor:
    check_estimator(estimator)
    return u_centre(k, inplace=inplace) if estimator == "unbiased" else h_centre(k, inplace=inplace)


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


def delta_stderr(
    matrix: Tensor,
    sums: dict[str, Tensor],
    weight_sum: float,
    n_batches: int,
) -> Tensor:
    """Delta-method standard error of minibatch CKA over ``B`` batches treated as independent draws.

    With batch weights ``w_b`` (vvm weighs each batch by its size), ``CKA = f(ā, b̄, c̄) = ā / sqrt(b̄ c̄)`` where
    ``ā = Σ w_b a_b / W`` (``a``: cross HSIC, ``b``, ``c``: self HSICs). With the gradient
    ``g = (1/sqrt(b̄c̄), -f/(2b̄), -f/(2c̄))`` the linearised per-batch value is ``z_b = g·(a_b, b_b, c_b)``
    (``Σ w_b z_b = 0`` exactly, f being homogeneous of degree 0), and
    ``se² = B/(B-1) · Σ_b w_b² z_b² / W²``, which is ``Σ z_b² / (B (B-1))`` for equal weights.

    ``sums`` holds ``aa, bb, cc, ab, ac, bc``: the sums ``Σ w_b² a_b²``, ``Σ w_b² a_b b_b``, ... (``bb``/``cc``
    are vectors over rows/columns) and ``b``/``c``: ``Σ w_b b_b``, ``Σ w_b c_b``. NaN for fewer than two batches.
    """
    if n_batches < 2:
        return torch.full_like(matrix, math.nan)
    b_m = (sums["b"] / weight_sum)[:, None]
    c_m = (sums["c"] / weight_sum)[None, :]
    ga = 1.0 / torch.sqrt(b_m * c_m)
    gb = -matrix / (2 * b_m)
    gc = -matrix / (2 * c_m)
    ss = (
        ga * ga * sums["aa"]
        + gb * gb * sums["bb"][:, None]
        + gc * gc * sums["cc"][None, :]
        + 2 * ga * gb * sums["ab"]
        + 2 * ga * gc * sums["ac"]
        + 2 * gb * gc * sums["bc"]
    )
    # Σ w² z² is a sum of squares; the expanded form can round to about -eps·(its terms) when every z_b is 0
    # (e.g. the diagonal of a symmetric matrix): that is 0, not an error
    var = ss.clamp_min(0) * (n_batches / (n_batches - 1)) / weight_sum**2
    return torch.sqrt(var).masked_fill(torch.isnan(matrix), math.nan)


def linearised_per_batch(a: Tensor, b: Tensor, c: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-batch CKA ``[B, Lx, Ly]`` and the delta method's weighted linearised values ``w_b z_b`` from the
    per-batch HSICs ``a`` ``[B, Lx, Ly]``, ``b`` ``[B, Lx]``, ``c`` ``[B, Ly]`` and weights ``w`` ``[B]``
    (see :func:`delta_stderr`). Two runs over the same batches give a paired standard error of their
    difference: ``se² = B/(B-1) Σ_b (w_b z^A_b - w_b z^B_b)² / W²``."""
    W = w.sum()
    wv = w[:, None, None]
    a_m = (wv * a).sum(0) / W
    b_m = (w[:, None] * b).sum(0)[:, None] / W
    c_m = (w[:, None] * c).sum(0)[None, :] / W
    f = a_m / torch.sqrt(b_m * c_m)
    z = a / torch.sqrt(b_m * c_m) - f / (2 * b_m) * b[:, :, None] - f / (2 * c_m) * c[:, None, :]
    return f, wv * z


def paired_difference_stderr(
    a1: Tensor, b1: Tensor, c1: Tensor, a2: Tensor, b2: Tensor, c2: Tensor, w: Tensor
) -> Tensor:
    """Standard error of ``CKA₁ - CKA₂`` when both were estimated on the same batches (weights ``w``): the
    delta method on the paired per-batch values, so that shared batch-to-batch noise cancels."""
    nb = w.shape[0]
    if nb < 2:
        return torch.full(a1.shape[1:], math.nan, dtype=torch.float64)
    _, z1 = linearised_per_batch(a1, b1, c1, w)
    _, z2 = linearised_per_batch(a2, b2, c2, w)
    d = z1 - z2
    return torch.sqrt((d * d).sum(0) * (nb / (nb - 1)) / w.sum() ** 2)
