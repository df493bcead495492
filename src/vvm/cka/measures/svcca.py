"""SVCCA (Raghu et al. 2017): CCA of each layer's top singular directions.

Per pool of ``n`` examples (``measure.svcca.n``), each layer's centred representation is reduced to its top ``k``
singular directions, the fewest that explain at least ``keep`` of its variance (default 0.99, as Raghu et al.;
``k`` at most the rank, :mod:`.subspace`): the eigenvectors of its Gram with the ``k`` largest eigenvalues. Then
the canonical correlations of the two reduced representations (the singular values of ``Q_x,kᵀ Q_y,k``) are
summarised as :mod:`.cca` does: ``rho`` ``Σ ρ_i / m`` (Raghu et al.'s mean) or ``r2`` ``Σ ρ_i² / m``, ``m =
min(k_x, k_y)``. With ``keep = 1`` nothing but the null space is cut: SVCCA is CCA. Google's reference code cuts
the same way (``np.linalg.svd`` of the centred activations, the top directions by cumulative variance).

Wide layers (``d ≥ n``): the cut keeps fewer than ``n - 1`` directions, so SVCCA is below 1 where CCA is 1, but
the directions kept still carry their full weight in the canonical correlations.

Memory and cost per pool: :mod:`.subspace`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vvm.cka.measures.base import option, register_measure
from vvm.cka.measures.cca import STATISTICS, pool_size, summarise
from vvm.cka.measures.subspace import Basis, PairMeasure, canonical_correlations


def kept_directions(lam: torch.Tensor, keep: float) -> int:
    """The fewest of the variances ``lam`` (descending) whose sum reaches ``keep`` of the total (all of them at
    most)."""
    total = lam.cumsum(0)
    reached = int((total < keep * total[-1]).sum()) + 1
    return min(reached, lam.numel())


@dataclass(frozen=True)
class SVCCAParams:
    keep: float = option(
        0.99,
        minimum=0.0,
        why="the share of each layer's variance its kept singular directions explain (Raghu et "
        "al. 2017: 0.99); at most 1 (CCA)",
    )
    statistic: str = option(
        "rho", choices=STATISTICS, why="rho: the mean canonical correlation; r2: the mean squared one"
    )
    n: int = pool_size()

    def __post_init__(self) -> None:
        if not 0 < float(self.keep) <= 1:
            raise ValueError(f"svcca.keep={self.keep!r} must be in (0, 1]: the share of variance kept")


@register_measure
class SVCCA(PairMeasure):
    """CCA of the top singular directions of two layers (see the module docstring)."""

    name = "svcca"
    label = "SVCCA"
    Params = SVCCAParams

    @property
    def min_reason(self) -> str:
        return "svcca (canonical correlations of centred representations)"

    @property
    def min_n(self) -> int:
        return 3

    @property
    def title(self) -> str:
        stat = "ρ̄" if self.params.statistic == "rho" else "R²"
        return f"SVCCA ({stat}, {self.params.keep:g} of the variance)"

    def pair(self, bx: Basis, by: Basis) -> float:
        kx, ky = kept_directions(bx.lam, self.params.keep), kept_directions(by.lam, self.params.keep)
        return summarise(canonical_correlations(bx.q[:, :kx], by.q[:, :ky]), self.params.statistic)


__all__ = ["SVCCA", "SVCCAParams", "kept_directions"]
