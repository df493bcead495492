"""What the CCA family, linear regression and Procrustes share: each layer's centred representation as the
eigendecomposition of its ``n x n`` Gram, and a measure computed pair by pair from two such layers.

For a pool of ``n`` examples with column-centred features ``Xc`` (``n x d``), the Gram ``K = Xc Xcᵀ = V Λ Vᵀ``
gives everything these indices need without the features: the eigenvectors of the ``r`` nonzero eigenvalues are
an orthonormal basis ``Q`` of the column space of ``Xc`` (its left singular vectors), and ``L = Q Λ^½`` is ``Xc``
up to a rotation of its features (``Xc = L Wᵀ``, ``W`` orthonormal): canonical correlations, regression fits and
Procrustes alignments are invariant to that rotation. The rank ``r`` is numpy's ``matrix_rank`` of ``K``: the
eigenvalues above ``n · eps · λ_max`` (``eps`` of the Grams' dtype); what lies below is rounding. So a layer with
more features than examples (``d ≥ n``) has ``r = n - 1`` (centring removes one direction) and ``Q`` spans every
centred vector: every CCA-type index of two such layers is 1, whatever the representations (Kornblith et al.
2019, section 3: CCA-type indices cannot tell such layers apart; the point of the paper, not a bug).

The Grams are those of the exact mode (float64, computed from the activations in float64 when one of these
measures is in the pass: ``needs_float64``); in the fast mode they are float32 and the rank follows float32's
``eps``, and the indices are only as good as that.

Cost per pool: an ``eigh`` of every layer's ``n x n`` Gram (``O(L n³)``, ``L n²`` float64 memory for the
bases) and, per pair of layers, the product ``Q_xᵀ Q_y`` and its singular values (``O(n r_x r_y)``; ``r ≤ min(d,
n-1)``): ``O(L_x L_y n³)`` for wide layers, the cost that limits ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vvm.cka.measures.base import Grams, ProductMeasure


@dataclass
class Basis:
    """One layer of one pool: ``q`` ``[n, r]`` the orthonormal basis of its centred representation's column space,
    ``lam`` ``[r]`` the variances along it (eigenvalues of the Gram, largest first), ``trace`` the Gram's trace
    ``‖Xc‖_F²``; ``features`` ``[n, d]`` the centred features (measures that set ``needs_features`` only)."""

    q: Tensor
    lam: Tensor
    trace: Tensor
    features: Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.q.shape[1])

    def factor(self) -> Tensor:
        """``L = Q Λ^½`` ``[n, r]``: ``Xc`` up to a rotation of its features (``L Lᵀ = K`` on the kept rank)."""
        return self.q * self.lam.sqrt()


def rank_cut(lam: Tensor, n: int, dtype: torch.dtype) -> int:
    """How many of the eigenvalues ``lam`` (descending) exceed ``n · eps(dtype) · λ_max`` (numpy's
    ``matrix_rank`` rule); 0 when the largest is not positive."""
    top = float(lam[0]) if lam.numel() else 0.0
    if not top > 0:
        return 0
    return int((lam > n * torch.finfo(dtype).eps * top).sum())


def bases(grams: Grams) -> tuple[list[Basis | None], Tensor]:
    """Every layer's :class:`Basis` (None for a layer whose examples are all the same) and ``defined`` ``[L]``."""
    k = grams.centred.double()
    lam, vec = torch.linalg.eigh(k)  # ascending
    lam, vec = lam.flip(-1), vec.flip(-1)
    traces = k.diagonal(dim1=-2, dim2=-1).sum(-1)
    out: list[Basis | None] = []
    for i in range(k.shape[0]):
        r = rank_cut(lam[i], grams.n, grams.centred.dtype)
        feats = None if grams.features is None else centred_features(grams.features[i])
        out.append(Basis(vec[i, :, :r], lam[i, :r], traces[i], feats) if r else None)
    defined = torch.tensor([b is not None for b in out], dtype=torch.bool, device=k.device)
    return out, defined


def centred_features(x: Tensor) -> Tensor:
    """``[n, d]`` float64 column-centred features."""
    x = x.reshape(x.shape[0], -1).double()
    return x - x.mean(dim=0, keepdim=True)


def canonical_correlations(qx: Tensor, qy: Tensor) -> Tensor:
    """The ``min(r_x, r_y)`` canonical correlations of two column spaces: the singular values of ``Q_xᵀ Q_y``
    (the cosines of their principal angles, Björck & Golub 1973), clipped to ``[0, 1]``."""
    return torch.linalg.svdvals(qx.T @ qy).clamp(0.0, 1.0)


class PairMeasure(ProductMeasure):
    """A pooled measure computed pair by pair from the layers' :class:`Basis` (see the module docstring):
    subclasses implement :meth:`pair`. A symmetric matrix (``gy=None``) computes each pair once."""

    pooled = True
    needs_float64 = True

    def pair(self, bx: Basis, by: Basis) -> float:
        """The index of one pair of layers in one pool."""
        raise NotImplementedError

    def batch_values(self, gx: Grams, gy: Grams | None) -> dict[str, Tensor]:
        bx, dx = bases(gx)
        by, dy = (bx, dx) if gy is None else bases(gy)
        values = torch.full((len(bx), len(by)), math.nan, dtype=torch.float64, device=dx.device)
        for i, a in enumerate(bx):
            for j in range(i if gy is None else 0, len(by)):
                b = by[j]
                if a is None or b is None:
                    continue
                values[i, j] = self.pair(a, b)
                if gy is None:
                    values[j, i] = values[i, j]
        return {"values": values, "defined_x": dx, "defined_y": dy}


__all__ = ["Basis", "PairMeasure", "bases", "canonical_correlations", "centred_features", "rank_cut"]
