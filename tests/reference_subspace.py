"""Independent float64 references for CCA, SVCCA, PWCCA, linear regression and Procrustes, written from the papers'
definitions on explicit features with numpy/scipy (no vvm code, no Grams).

- CCA (Hotelling 1936; Kornblith et al. 2019, Table 1): the canonical correlations are the singular values of
  ``Σ_xx^{-1/2} Σ_xy Σ_yy^{-1/2}`` of the centred features (whitening by ``scipy.linalg.sqrtm``); ``ρ̄`` their mean,
  ``R²_CCA`` the mean of their squares; cross-checked with ``scipy.linalg.subspace_angles``;
- SVCCA (Raghu et al. 2017): ``np.linalg.svd`` of each centred representation, its top directions that explain
  ``keep`` of the variance (``U_k S_k``), then CCA as above;
- PWCCA (Morcos et al. 2018): canonical variates ``h_i = Xc Σ_xx^{-1/2} u_i`` normalised, ``α_i = Σ_j |⟨h_i,
  x_j⟩|`` over the neurons, ``Σ α ρ / Σ α``, averaged over both directions;
- linear regression: ``np.linalg.lstsq`` residuals, ``R² = 1 - ‖Xc - Yc B‖² / ‖Xc‖²``, averaged over both directions;
- Procrustes (Schönemann 1966): ``scipy.linalg.orthogonal_procrustes(Xc, Yc)``'s scale (the nuclear norm of
  ``Xcᵀ Yc``) over ``‖Xc‖_F ‖Yc‖_F``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes, sqrtm, subspace_angles


def centred(x) -> np.ndarray:
    x = np.asarray(x.detach().double() if hasattr(x, "detach") else x, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    return x - x.mean(axis=0)


def inv_sqrt(s: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.real(sqrtm(s)))


def cca_svd(x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ρ, U, Vᵀ, Σ_xx^{-1/2}, ...)``: the SVD of the whitened cross-covariance (full-rank features, d < n)."""
    xc, yc = centred(x), centred(y)
    wx, wy = inv_sqrt(xc.T @ xc), inv_sqrt(yc.T @ yc)
    u, rho, vt = np.linalg.svd(wx @ (xc.T @ yc) @ wy, full_matrices=False)
    return rho, u, vt, (xc, yc, wx, wy)


def cca(x, y, statistic: str = "rho") -> float:
    rho = np.clip(cca_svd(x, y)[0], 0, 1)
    return float(np.mean(rho if statistic == "rho" else rho**2))


def cca_angles(x, y) -> np.ndarray:
    """The canonical correlations as the cosines of the principal angles between the column spaces."""
    return np.sort(np.cos(subspace_angles(centred(x), centred(y))))[::-1]


def svd_reduce(x, keep: float) -> np.ndarray:
    u, s, _ = np.linalg.svd(centred(x), full_matrices=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(share, keep - 1e-12) + 1)
    return u[:, :k] * s[:k]


def svcca(x, y, keep: float = 0.99, statistic: str = "rho") -> float:
    return cca(svd_reduce(x, keep), svd_reduce(y, keep), statistic)


def pwcca_one_way(x, y) -> float:
    rho, u, vt, (xc, yc, wx, wy) = cca_svd(x, y)
    h = xc @ wx @ u  # canonical variates of x, one per column
    h = h / np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(axis=1)  # Σ_j |<h_i, x_j>| over the neurons j
    return float((alpha * np.clip(rho, 0, 1)).sum() / alpha.sum())


def pwcca(x, y) -> float:
    return (pwcca_one_way(x, y) + pwcca_one_way(y, x)) / 2


def r2(target, predictor) -> float:
    t, p = centred(target), centred(predictor)
    b = np.linalg.lstsq(p, t, rcond=None)[0]
    return float(1 - np.sum((t - p @ b) ** 2) / np.sum(t**2))


def linreg(x, y) -> float:
    return (r2(x, y) + r2(y, x)) / 2


def procrustes(x, y, centre: bool = True) -> float:
    xc, yc = (centred(x), centred(y)) if centre else (np.asarray(x, float), np.asarray(y, float))
    d = max(xc.shape[1], yc.shape[1])  # orthogonal_procrustes needs equal widths: zero-pad
    xp = np.pad(xc, ((0, 0), (0, d - xc.shape[1])))
    yp = np.pad(yc, ((0, 0), (0, d - yc.shape[1])))
    scale = orthogonal_procrustes(xp, yp)[1]
    return float(scale / (np.linalg.norm(xc) * np.linalg.norm(yc)))
