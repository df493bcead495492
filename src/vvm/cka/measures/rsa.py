"""RSA (representational similarity analysis, Kriegeskorte et al. 2008): do two layers order the distances
between the images alike?

Per pool of ``n`` examples (``measure.rsa.n``, default 1,024; :mod:`vvm.cka.pools`), a layer's representational
dissimilarity matrix (RDM) is its dissimilarities ``d_ij`` over the pairs ``i < j`` (rsatoolbox's vector form),
with ``distance``:

- ``correlation`` (the default, Kriegeskorte et al. 2008 and rsatoolbox's ``calc_rdm`` standard):
  ``1 - Pearson r`` of the two examples' feature vectors, each centred by its own mean over the features (from
  the Gram of the raw features: ``r_ij = (K_ij/d - m_i m_j) / (s_i s_j)``); blind to an example's gain and offset;
- ``euclidean``: ``‖x_i - x_j‖``;
- ``sqeuclidean``: ``‖x_i - x_j‖² = K_ii + K_jj - 2 K_ij`` (the same from the centred Gram as from the raw one).
  rsatoolbox's ``euclidean`` is this divided by the number of features: the same ranks.

The similarity of two layers' RDMs is ``correlation``: ``spearman`` (average ranks for ties), ``pearson``, or
rsatoolbox's comparators for tied RDMs (Nili et al. 2014): ``rho-a`` (``12 Σ r'_x r'_y / (m³ - m)`` of centred
average ranks over the ``m = n(n-1)/2`` pairs) and ``tau-a`` (Kendall's τa, ``(concordant - discordant) /
(m(m-1)/2)``, computed per pair of layers on the CPU with scipy: ``O(L² m log m)``, slow for many layers). The
first three are one product of the stacked transformed RDMs; pools are averaged. A layer whose dissimilarities
are all equal (a constant layer) has no correlation: NaN. The RDMs of the first pool are kept (``first_rdms``)
for ``rdms.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vvm.cka.measures.base import Grams, ProductMeasure, option, register_measure
from vvm.cka.pools import DEFAULT_POOL

CORRELATIONS = ("spearman", "pearson", "rho-a", "tau-a")
DISTANCES = ("correlation", "euclidean", "sqeuclidean")


def average_ranks(v: Tensor) -> Tensor:
    """Ranks ``1..m`` along the last dimension of ``[..., m]``, tied values sharing the mean of their ranks (as
    ``scipy.stats.rankdata(method="average")``), in float64."""
    m = v.shape[-1]
    s, order = torch.sort(v, dim=-1, stable=True)
    pos = torch.arange(m, device=v.device).expand_as(s)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=-1).values
    last = torch.where(ends, pos, torch.full_like(pos, m)).flip(-1).cummin(dim=-1).values.flip(-1)
    ranks = torch.empty(s.shape, dtype=torch.float64, device=v.device)
    return ranks.scatter_(-1, order, (first + last).double() / 2 + 1)


def upper(k: Tensor) -> Tensor:
    """``[L, n(n-1)/2]``: the entries ``i < j`` of ``[L, n, n]``, row after row (rsatoolbox's vector form)."""
    n = k.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=k.device)
    return k[:, iu[0], iu[1]]


def pairwise_distances(k: Tensor) -> Tensor:
    """``[L, n(n-1)/2]``: the squared distances over the pairs ``i < j`` from Grams ``[L, n, n]``, float64."""
    n = k.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=k.device)
    k = k.double()
    sq = k.diagonal(dim1=-2, dim2=-1)
    return sq[:, iu[0]] + sq[:, iu[1]] - 2 * k[:, iu[0], iu[1]]


def correlation_distances(grams: Grams) -> Tensor:
    """``[L, n(n-1)/2]``: ``1 - r_ij``, Pearson's r between examples ``i`` and ``j`` over the features (each
    example centred by its own mean), from the raw Gram; an example with no spread correlates with nothing."""
    if grams.parts is None:
        raise RuntimeError(
            "correlation distances need the raw features' Gram: the measure must set needs_raw"
        )
    d = grams.parts.d.double()[:, None]
    m = grams.parts.rs.double() / d  # [L, n] each example's mean over its features
    cov = grams.raw() / d[..., None] - m[:, :, None] * m[:, None, :]
    sd = cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    inv = torch.where(sd > 0, 1.0 / torch.where(sd > 0, sd, torch.ones_like(sd)), torch.zeros_like(sd))
    return 1.0 - upper(cov * inv[:, :, None] * inv[:, None, :])


def dissimilarities(grams: Grams, distance: str) -> Tensor:
    """Each layer's RDM in vector form ``[L, n(n-1)/2]`` (float64) under ``distance``."""
    if distance == "correlation":
        return correlation_distances(grams)
    d = pairwise_distances(grams.centred)
    return d.clamp_min(0).sqrt() if distance == "euclidean" else d


def tau_a(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's τa from scipy's τb: ``τa = τb √((m0 - t_x)(m0 - t_y)) / m0``, ``m0 = m(m-1)/2``, ``t`` the
    tied pairs of each vector."""
    from scipy.stats import kendalltau

    m0 = x.size * (x.size - 1) / 2

    def ties(v: np.ndarray) -> float:
        c = np.unique(v, return_counts=True)[1].astype(float)
        return float((c * (c - 1) / 2).sum())

    tb = kendalltau(x, y, variant="b").statistic
    return float(tb * np.sqrt((m0 - ties(x)) * (m0 - ties(y))) / m0)


@dataclass(frozen=True)
class RSAParams:
    correlation: str = option(
        "spearman",
        choices=CORRELATIONS,
        why="how two RDMs are compared: spearman (ranks, ties averaged), "
        "pearson, rho-a or tau-a (rsatoolbox's comparators for tied RDMs)",
    )
    distance: str = option(
        "correlation",
        choices=DISTANCES,
        why="the RDM's dissimilarity: correlation (1 - Pearson r of two "
        "examples' features, Kriegeskorte et al. 2008), euclidean or sqeuclidean",
    )
    n: int = option(
        DEFAULT_POOL, minimum=3, why="examples per pool (RDMs are n x n); the whole split when fewer"
    )


@register_measure
class RSA(ProductMeasure):
    """The correlation of two layers' representational dissimilarity vectors (see the module docstring)."""

    name = "rsa"
    label = "RSA"
    Params = RSAParams
    pooled = True

    def __init__(self, params: Any = None, **engine: Any) -> None:
        super().__init__(params, **engine)
        self.first_rdms: list[Tensor] | None = None  # the first pool's RDMs (x, then y when it differs)
        self._keep = False

    @property
    def needs_raw(self) -> bool:  # type: ignore[override]
        return self.params.distance == "correlation"

    @property
    def cosine(self) -> bool:  # type: ignore[override]
        return self.params.correlation in ("spearman", "pearson")

    @property
    def min_n(self) -> int:
        return 3  # three pairs: the fewest distances a correlation can rank

    @property
    def min_reason(self) -> str:
        return "rsa (a correlation of the n(n-1)/2 pairwise distances)"

    @property
    def title(self) -> str:
        how = {"rho-a": "rho-a", "tau-a": "tau-a"}.get(
            self.params.correlation, self.params.correlation.title()
        )
        return f"RSA ({how}, {self.params.distance} RDMs)"

    def normaliser(self, n: int) -> float:
        m = n * (n - 1) // 2
        return (m**3 - m) / 12.0  # rho-a; the others are cosines

    def add(
        self, metric: Any, gx: Grams, gy: Grams | None, *, batch_id: int, masked: bool, last: bool
    ) -> None:
        self._keep = not masked and batch_id == 0 and self.first_rdms is None and gx.n >= self.min_n
        if self._keep:
            self.first_rdms = []
        super().add(metric, gx, gy, batch_id=batch_id, masked=masked, last=last)
        self._keep = False

    def transform(self, grams: Grams) -> tuple[Tensor, Tensor]:
        d = dissimilarities(grams, self.params.distance)
        if self._keep and self.first_rdms is not None:
            self.first_rdms.append(d.detach().cpu())
        defined = (d.amax(-1) > d.amin(-1)) if d.shape[-1] else torch.zeros(d.shape[0], dtype=torch.bool)
        if self.params.correlation in ("spearman", "rho-a"):
            d = average_ranks(d)
        if self.params.correlation != "tau-a":
            d = d - d.mean(dim=-1, keepdim=True)
        return d, defined

    def values(self, tx: Tensor, ty: Tensor | None, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.params.correlation != "tau-a":
            return super().values(tx, ty, n)
        x = tx.cpu().numpy()
        y = x if ty is None else ty.cpu().numpy()
        out = np.array([[tau_a(a, b) for b in y] for a in x])
        return torch.as_tensor(out, dtype=tx.dtype, device=tx.device), None, None


__all__ = [
    "CORRELATIONS",
    "DISTANCES",
    "RSA",
    "RSAParams",
    "average_ranks",
    "correlation_distances",
    "dissimilarities",
    "pairwise_distances",
    "tau_a",
]
