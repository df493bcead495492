"""Mutual k-nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis"): do two
layers give each image the same neighbours?

Per batch, with the cosine similarity of the features as they are, ``s_ij = K_ij / √(K_ii K_jj)`` (``K = X Xᵀ``,
rebuilt exactly from the recorder's centred Gram and :class:`~vvm.cka.functional.RawParts`; an all-zero example
is similar to nothing: ``s = 0``, as scikit-learn's cosine distance has it), ``N_k(i)`` is the set of the ``k``
examples ``j ≠ i`` of largest ``s_ij``, ties going to the smaller index. The alignment of two layers is the mean
over ``i`` of ``|N_k^x(i) ∩ N_k^y(i)| / k``. The transform is each layer's ``n x n`` 0/1 neighbour indicator,
flattened: one product of the stacked indicators gives every pair's ``Σ_i |N^x(i) ∩ N^y(i)|``, divided by
``n k``. A constant layer (every example the same) has no neighbours: NaN.

The value depends on ``n``: two unrelated layers share ``k/(n-1)`` of their neighbours by chance. So it is
computed on pools of the declared ``n`` examples (``measure.knn.n``, default 1,024 as in Huh et al.; the whole
split when smaller, :mod:`vvm.cka.pools`), whatever the CKA batch size, and its files carry ``pool_size`` and the
chance level ``chance = k/(n-1)``. An example whose features are all zero in a layer has no direction: it is left
out of that layer (neither a query nor a neighbour; a warning names the layer), and a pair of layers averages
the examples both keep (``|N^x(i) ∩ N^y(i)|`` summed over them, divided by ``k`` times their number).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vvm.cka.measures.base import Grams, ProductMeasure, option, register_measure
from vvm.cka.pools import DEFAULT_POOL


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
    k: int = option(10, minimum=1, why="neighbours per example (Huh et al. 2024 use 10); k < n")
    n: int = option(
        DEFAULT_POOL,
        minimum=2,
        why="examples per pool, the set neighbours are found in (Huh et al. 2024: "
        "1024); the whole split when it holds fewer",
    )


def kept_examples(grams: Grams) -> Tensor:
    """``[L, n]`` bool: the examples whose features are not all zero, per layer (exact: summed squares)."""
    if grams.parts is None:
        raise RuntimeError("knn needs the squared norms of the raw features: the measure must set needs_raw")
    return grams.parts.sq > 0


@register_measure
class MutualKNN(ProductMeasure):
    """Mutual k-NN alignment of two layers (see the module docstring)."""

    name = "knn"
    label = "kNN"
    Params = KNNParams
    needs_raw = True
    pooled = True

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

    def facts(self, pool_size: int | None) -> dict[str, float]:
        """The chance level ``k/(n-1)``: the share of neighbours two unrelated layers have in common."""
        return {} if not pool_size or pool_size < 2 else {"chance": self.params.k / (pool_size - 1)}

    def transform(self, grams: Grams) -> tuple[Tensor, Tensor]:
        a, kept, defined = self.indicators(grams)
        return a.reshape(a.shape[0], -1), defined

    def indicators(self, grams: Grams) -> tuple[Tensor, Tensor, Tensor]:
        """``(A [L, n, n], kept [L, n], defined [L])``: each layer's neighbour indicator among the examples it
        keeps (an all-zero example is neither a query nor a neighbour); a layer is defined when its examples
        are not all the same and it keeps more than ``k``."""
        k = int(self.params.k)
        kept = kept_examples(grams)
        s = cosine_similarities(grams.raw())
        s = s.masked_fill(~kept[:, None, :], -torch.inf)  # a left-out example is nobody's neighbour
        a = neighbour_indicator(s, k) * kept[:, :, None]  # ... and asks for none
        varies = grams.centred.diagonal(dim1=-2, dim2=-1).sum(-1) > 0  # not every example the same
        return a, kept, varies & (kept.sum(-1) > k)

    def batch_values(self, gx: Grams, gy: Grams | None) -> dict[str, Tensor]:
        """``Σ_i |N^x(i) ∩ N^y(i)| / (k · #examples both layers keep)`` for every pair from two products."""
        ax, kx, dx = self.indicators(gx)
        ay, ky, dy = (ax, kx, dx) if gy is None else self.indicators(gy)
        ax, ay = ax.reshape(ax.shape[0], -1), ay.reshape(ay.shape[0], -1)
        both = kx.to(ax.dtype) @ ky.to(ax.dtype).T
        values = (ax @ ay.T) / (self.params.k * both.clamp_min(1))
        out = {"values": values, "defined_x": dx, "defined_y": dy, "excluded_x": (~kx).sum(-1)}
        return {**out, "excluded_y": (~ky).sum(-1)}


__all__ = ["KNNParams", "MutualKNN", "cosine_similarities", "kept_examples", "neighbour_indicator"]
