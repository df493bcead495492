"""CCA (Hotelling 1936) as a similarity index: the mean canonical correlation ``ρ̄`` or ``R²_CCA`` (Kornblith et
al. 2019, Table 1).

Per pool of ``n`` examples (``measure.cca.n``, default 1,024; :mod:`vvm.cka.pools`), the canonical correlations
``ρ_1 ≥ ... ≥ ρ_m`` of two layers' centred representations are the singular values of ``Q_xᵀ Q_y``, ``Q`` an
orthonormal basis of each one's column space (from its ``n x n`` Gram, :mod:`.subspace`), ``m = min(r_x, r_y)``
the smaller rank. ``statistic``:

- ``rho`` (default): ``ρ̄ = Σ ρ_i / m = ‖Q_xᵀ Q_y‖_* / m``;
- ``r2``: ``R²_CCA = Σ ρ_i² / m = ‖Q_xᵀ Q_y‖_F² / m``.

Kornblith et al. divide by ``p₁``, the width of the narrower representation; vvm divides by the smaller rank,
the same for full-rank representations, and symmetric. Both are invariant to any invertible linear map of either
representation. A layer with at least as many features as examples has the rank ``n - 1`` of every centred
representation: every pair of such layers then scores 1, whatever they compute (Kornblith et al. 2019: the
reason CCA cannot identify corresponding layers of wide networks; the paper's point, not a bug). Use a larger
``n`` to see more.

Memory and cost per pool: :mod:`.subspace` (an ``eigh`` per layer, an SVD of ``r_x x r_y`` per pair).
"""

from __future__ import annotations

from dataclasses import dataclass

from vvm.cka.measures.base import option, register_measure
from vvm.cka.measures.subspace import Basis, PairMeasure, canonical_correlations
from vvm.cka.pools import DEFAULT_POOL

STATISTICS = ("rho", "r2")


def pool_size(why: str = "examples per pool") -> int:
    """The ``n`` parameter of a measure computed on pools (:mod:`vvm.cka.pools`)."""
    return option(DEFAULT_POOL, minimum=3, why=f"{why}; the whole split when it holds fewer")


def summarise(rho, statistic: str) -> float:
    """``Σ ρ / m`` (``rho``) or ``Σ ρ² / m`` (``r2``) of the canonical correlations ``rho`` ``[m]``."""
    return float((rho if statistic == "rho" else rho * rho).mean()) if rho.numel() else float("nan")


@dataclass(frozen=True)
class CCAParams:
    statistic: str = option(
        "rho",
        choices=STATISTICS,
        why="rho: the mean canonical correlation; r2: the mean squared one (R²_CCA)",
    )
    n: int = pool_size("examples per pool (a layer with >= n features has the full rank n - 1: CCA = 1)")


@register_measure
class CCA(PairMeasure):
    """The mean (squared) canonical correlation of two layers (see the module docstring)."""

    name = "cca"
    label = "CCA"
    Params = CCAParams

    @property
    def min_reason(self) -> str:
        return "cca (canonical correlations of centred representations)"

    @property
    def min_n(self) -> int:
        return 3

    @property
    def title(self) -> str:
        return "CCA (ρ̄)" if self.params.statistic == "rho" else "CCA (R²)"

    def pair(self, bx: Basis, by: Basis) -> float:
        return summarise(canonical_correlations(bx.q, by.q), self.params.statistic)


__all__ = ["CCA", "CCAParams", "STATISTICS", "pool_size", "summarise"]
