"""Independent float64 references for RSA and mutual kNN, from explicit features (no vvm code).

- RSA (Kriegeskorte et al. 2008): the dissimilarities over pairs i < j with ``scipy.spatial.distance.pdist(x,
  distance)`` (``correlation``, ``euclidean``, ``sqeuclidean``), compared with ``scipy.stats.spearmanr`` (average
  ranks for ties), ``scipy.stats.pearsonr``, or rsatoolbox's ``compare`` (``rho-a``, ``tau-a``);
- mutual kNN (Huh et al. 2024): each example's k nearest neighbours by cosine similarity of the raw features,
  itself excluded, from scikit-learn's ``NearestNeighbors(metric="cosine", algorithm="brute")`` or, where ties
  matter, from an explicit cosine matrix and a stable argsort (ties to the smaller index); the alignment is the
  mean over examples of ``|N_x(i) ∩ N_y(i)| / k``;
- over batches: the size-weighted mean of the per-batch values, and its standard error
  ``sqrt(B/(B-1) Σ w_b² (v_b - v̄)²) / Σ w_b`` written out with numpy.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr


def as_f64(x) -> np.ndarray:
    x = np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def rdm(x, distance: str = "correlation") -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return pdist(as_f64(x), distance)


def rsa(x, y, correlation: str = "spearman", distance: str = "correlation") -> float:
    dx, dy = rdm(x, distance), rdm(y, distance)
    if not (np.ptp(dx) > 0 and np.ptp(dy) > 0):  # constant (or undefined) dissimilarities
        return float("nan")
    if correlation == "spearman":
        return float(spearmanr(dx, dy).statistic)
    if correlation == "pearson":
        return float(pearsonr(dx, dy).statistic)
    from rsatoolbox.rdm import RDMs, compare

    return float(compare(RDMs(dx[None]), RDMs(dy[None]), method=correlation)[0, 0])


def neighbours_sklearn(x, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(as_f64(x))
    return nn.kneighbors(return_distance=False)  # the query point is not its own neighbour


def neighbours_bruteforce(x, k: int) -> np.ndarray:
    """By hand: cosine similarities (an all-zero example similar to nothing), self excluded, a stable sort on
    the negated similarities so that ties go to the smaller index."""
    x = as_f64(x)
    norms = np.linalg.norm(x, axis=1)
    unit = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def knn(x, y, k: int = 10, neighbours=neighbours_sklearn) -> float:
    """An example whose features are all zero in a layer is left out of that layer (neither query nor
    neighbour: the neighbours are found among the others) and of the average."""
    x, y = as_f64(x), as_f64(y)
    keep_x, keep_y = np.abs(x).sum(1) > 0, np.abs(y).sum(1) > 0
    ix, iy = np.flatnonzero(keep_x), np.flatnonzero(keep_y)
    nx = dict(zip(ix, ix[neighbours(x[ix], k)]))  # back to the pool's indices
    ny = dict(zip(iy, iy[neighbours(y[iy], k)]))
    both = np.flatnonzero(keep_x & keep_y)
    return float(np.mean([len(set(nx[i]) & set(ny[i])) / k for i in both]))


def per_batch(batches_x, batches_y, fn) -> tuple[np.ndarray, np.ndarray]:
    """``[B, Lx, Ly]`` values of ``fn(x_layer, y_layer)`` per batch, and the batch sizes ``[B]``."""
    values = np.array([[[fn(fx, fy) for fy in by] for fx in bx] for bx, by in zip(batches_x, batches_y)])
    sizes = np.array([as_f64(bx[0]).shape[0] for bx in batches_x], dtype=float)
    return values, sizes


def weighted_mean(values: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Size-weighted mean over batches and its standard error (NaN with fewer than two batches)."""
    mean = np.tensordot(w, values, axes=1) / w.sum()
    b = len(w)
    if b < 2:
        return mean, np.full(mean.shape, np.nan)
    resid = values - mean[None]
    se = np.sqrt(b / (b - 1) * np.tensordot(w**2, resid**2, axes=1)) / w.sum()
    return mean, se
