"""RSA (representational similarity analysis, Kriegeskorte et al. 2008): do two layers order the distances
between the images alike?

Per batch, a layer's representational dissimilarity vector is ``d_ij = ‖x_i - x_j‖² = K_ii + K_jj - 2 K_ij`` over
the pairs ``i < j`` (the same from the Gram of the centred features as from the raw one: centring moves no
distance). The similarity of two layers is the Spearman correlation of their vectors (average ranks for ties;
``correlation="pearson"``: Pearson's r of the distances themselves). The transform ranks (or not) and centres
each layer's vector, so that one product of the stacked vectors, divided by their norms, is every pair's
correlation; batches are averaged with their sizes as weights. A layer whose distances are all equal (a
constant layer) has no correlation: NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vvm.cka.measures.base import Grams, ProductMeasure, option, register_measure

CORRELATIONS = ("spearman", "pearson")


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


def pairwise_distances(k: Tensor) -> Tensor:
    """``[L, n(n-1)/2]``: the squared distances over the pairs ``i < j`` from Grams ``[L, n, n]``, float64."""
    n = k.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=k.device)
    k = k.double()
    sq = k.diagonal(dim1=-2, dim2=-1)
    return sq[:, iu[0]] + sq[:, iu[1]] - 2 * k[:, iu[0], iu[1]]


@dataclass(frozen=True)
class RSAParams:
    correlation: str = option(
        "spearman", choices=CORRELATIONS, why="spearman: rank correlation of the pairwise distances (ties "
        "averaged); pearson: linear correlation of the distances"
    )  # fmt: skip


@register_measure
class RSA(ProductMeasure):
    """The correlation of two layers' representational dissimilarity vectors (see the module docstring)."""

    name = "rsa"
    label = "RSA"
    Params = RSAParams
    cosine = True

    @property
    def min_n(self) -> int:
        return 3  # three pairs: the fewest distances a correlation can rank

    @property
    def min_reason(self) -> str:
        return "rsa (a correlation of the n(n-1)/2 pairwise distances)"

    @property
    def title(self) -> str:
        return f"RSA ({self.params.correlation.title()})"

    def transform(self, grams: Grams) -> tuple[Tensor, Tensor]:
        d = pairwise_distances(grams.centred)
        if self.params.correlation == "spearman":
            d = average_ranks(d)
        d = d - d.mean(dim=-1, keepdim=True)
        return d, torch.ones(d.shape[0], dtype=torch.bool, device=d.device)


__all__ = ["CORRELATIONS", "RSA", "RSAParams", "average_ranks", "pairwise_distances"]
