"""Mutual k-nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis"): do two
layers give each image the same neighbours?

Per batch, with the cosine similarity of the features as they are, ``s_ij = K_ij / √(K_ii K_jj)`` (``K = X Xᵀ``,
rebuilt exactly from the recorder's centred Gram and :class:`~vvm.cka.functional.RawParts`; an all-zero example
is similar to nothing: ``s = 0``, as scikit-learn's cosine distance has it), ``N_k(i)`` is the set of the ``k``
examples ``j ≠ i`` of largest ``s_ij``, ties going to the smaller index. The alignment of two layers is the mean
over ``i`` of ``|N_k^x(i) ∩ N_k^y(i)| / k``. The transform is each layer's ``n x n`` 0/1 neighbour indicator,
flattened: one product of the stacked indicators gives every pair's ``Σ_i |N^x(i) ∩ N^y(i)|``, divided by
``n k``. ``k`` must be below the batch size; a constant layer (every example the same) has no neighbours: NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vvm.cka.measures.base import Grams, ProductMeasure, option, register_measure


def cosine_similarities(k: Tensor) -> Tensor:
    """``s_ij = K_ij / √(K_ii K_jj)`` of Grams ``[..., n, n]`` of raw features; 0 for an all-zero example."""
    norm = k.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    inv = torch.where(
        norm > 0, 1.0 / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(norm)
    )
    return k * inv[..., :, None] * inv[..., None, :]


def neighbour_indicator(s: Tensor, k: int) -> Tensor:
    """``[..., n, n]`` 0/1 (in ``s``'s dtype): row ``i`` holds ones at the ``k`` examples ``j ≠ i`` of largest
    ``s_ij``, ties to the smaller index (a stable sort)."""
    s = s.clone()
    s.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf)
    idx = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(s).scatter_(-1, idx, 1.0)


@dataclass(frozen=True)
class KNNParams:
    k: int = option(10, minimum=1, why="neighbours per example (Huh et al. 2024 use 10); k < the batch size")


@register_measure
class MutualKNN(ProductMeasure):
    """Mutual k-NN alignment of two layers (see the module docstring)."""

    name = "knn"
    label = "kNN"
    Params = KNNParams
    needs_raw = True

    @property
    def min_n(self) -> int:
        return int(self.params.k) + 1

    @property
    def min_reason(self) -> str:
        return f"knn with k={self.params.k} (k neighbours besides the example itself)"

    @property
    def title(self) -> str:
        return f"mutual {self.params.k}-NN"

    def normaliser(self, n: int) -> float:
        return float(n * self.params.k)

    def transform(self, grams: Grams) -> tuple[Tensor, Tensor]:
        a = neighbour_indicator(cosine_similarities(grams.raw()), int(self.params.k))
        defined = grams.centred.diagonal(dim1=-2, dim2=-1).sum(-1) > 0  # not every example the same
        return a.reshape(a.shape[0], -1), defined


__all__ = ["KNNParams", "MutualKNN", "cosine_similarities", "neighbour_indicator"]
