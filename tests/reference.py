"""An independent float64 reference for CKA, written from the papers' formulas with numpy (no vvm code).

- unbiased HSIC: Song et al. 2012, eq. (5), with K̃ the kernel with zeroed diagonal:
  HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))
- biased HSIC: Gretton et al. 2005, tr(KHLH)/(n-1)² with an explicit centring matrix H
- features are centred (numpy, float64) before the kernel
- RBF: pairwise squared distances by broadcasting, σ² = frac²·np.median of the i<j distances; in minibatch
  CKA σ² is fixed per layer on the first batch (bandwidth="fixed") or taken per batch ("per_batch")
- minibatch CKA weighs each batch's HSIC by its size n_b (weights="size"), or equally (weights="equal")
"""

from __future__ import annotations

import numpy as np


def as_f64(x) -> np.ndarray:
    x = np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def sq_dists(x) -> np.ndarray:
    x = as_f64(x)
    diff = x[:, None, :] - x[None, :, :]
    return (diff**2).sum(-1)


def median_sigma2(x, frac: float = 1.0) -> float:
    d2 = sq_dists(x)
    iu = np.triu_indices(d2.shape[0], 1)
    return float(frac**2 * np.median(d2[iu]))


def kernel(x, kind: str = "linear", frac: float = 1.0, sigma2: float | None = None) -> np.ndarray:
    x = as_f64(x)
    x = x - x.mean(axis=0)  # HSIC is translation invariant; centring keeps float64 itself out of trouble
    if kind == "linear":
        return x @ x.T
    d2 = sq_dists(x)
    if sigma2 is None:
        sigma2 = median_sigma2(x, frac)
    if sigma2 == 0:
        return (d2 == 0).astype(np.float64)
    return np.exp(-d2 / (2 * sigma2))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def hsic(k, l, estimator: str) -> float:  # noqa: E741
    return hsic_unbiased(k, l) if estimator == "unbiased" else hsic_biased(k, l)


def minibatch_cka(
    batches_x,
    batches_y,
    *,
    kind="linear",
    estimator="unbiased",
    frac=1.0,
    weights="size",
    bandwidth="fixed",
) -> np.ndarray:
    """batches_x: list over batches of lists over layers of [n_b, ...] features. Returns [Lx, Ly]."""
    lx, ly = len(batches_x[0]), len(batches_y[0])
    xy = np.zeros((lx, ly))
    xx = np.zeros(lx)
    yy = np.zeros(ly)
    fixed_x = [median_sigma2(f, frac) for f in batches_x[0]] if kind == "rbf" else [None] * lx
    fixed_y = [median_sigma2(f, frac) for f in batches_y[0]] if kind == "rbf" else [None] * ly
    for bx, by in zip(batches_x, batches_y):
        w = float(as_f64(bx[0]).shape[0]) if weights == "size" else 1.0
        sx = fixed_x if bandwidth == "fixed" else [None] * lx
        sy = fixed_y if bandwidth == "fixed" else [None] * ly
        kx = [kernel(f, kind, frac, s) for f, s in zip(bx, sx)]
        ky = [kernel(f, kind, frac, s) for f, s in zip(by, sy)]
        for i in range(lx):
            xx[i] += w * hsic(kx[i], kx[i], estimator)
            for j in range(ly):
                xy[i, j] += w * hsic(kx[i], ky[j], estimator)
        for j in range(ly):
            yy[j] += w * hsic(ky[j], ky[j], estimator)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = xy / np.sqrt(np.outer(xx, yy))
    out[(xx <= 0)[:, None] | (yy <= 0)[None, :]] = np.nan
    return out


def cka(x, y, *, kind="linear", estimator="unbiased", frac=1.0) -> float:
    return float(minibatch_cka([[x]], [[y]], kind=kind, estimator=estimator, frac=frac)[0, 0])
