"""Linear regression as a similarity index (Kornblith et al. 2019, Table 1): how much of one layer's centred
representation a least-squares fit from the other explains, symmetrised.

Per pool of ``n`` examples (``measure.linreg.n``), the fit of ``Xc`` from ``Yc`` (with an intercept: both are
centred) leaves ``R²_{Y→X} = 1 - min_B ‖Xc - Yc B‖_F² / ‖Xc‖_F² = ‖Q_yᵀ Xc‖_F² / ‖Xc‖_F²``, ``Q_y`` an orthonormal
basis of ``Yc``'s column space. From the Grams alone (:mod:`.subspace`): ``‖Q_yᵀ L_x‖_F² / tr K_x`` with ``L_x =
Q_x Λ_x^½``. The index is asymmetric; vvm reports the mean of the two directions, ``(R²_{Y→X} + R²_{X→Y}) / 2``
(Kornblith et al. list the one-sided ``R²_LR``; the mean makes the matrix symmetric, like every other measure's).
Invariant to an invertible linear map of the predictor and to an orthogonal map and isotropic scaling of the
target. A layer with at least as many features as examples predicts anything perfectly: every pair of such
layers scores 1.

Memory and cost per pool: :mod:`.subspace` (no SVD: one ``r_y x r_x`` product per pair).
"""

from __future__ import annotations

from dataclasses import dataclass

from vvm.cka.measures.base import register_measure
from vvm.cka.measures.cca import pool_size
from vvm.cka.measures.subspace import Basis, PairMeasure


def explained(target: Basis, predictor: Basis) -> float:
    """``R²`` of the least-squares fit of ``target``'s centred representation from ``predictor``'s."""
    fit = predictor.q.T @ target.factor()
    return float((fit * fit).sum() / target.trace)


@dataclass(frozen=True)
class LinRegParams:
    n: int = pool_size("examples per pool (a layer with >= n features fits anything: R² = 1)")


@register_measure
class LinearRegression(PairMeasure):
    """The mean of the two least-squares ``R²`` of two layers (see the module docstring)."""

    name = "linreg"
    label = "LinReg"
    Params = LinRegParams

    @property
    def min_reason(self) -> str:
        return "linreg (least-squares fits of centred representations)"

    @property
    def min_n(self) -> int:
        return 3

    @property
    def title(self) -> str:
        return "linear regression (R², mean of both directions)"

    def pair(self, bx: Basis, by: Basis) -> float:
        return (explained(bx, by) + explained(by, bx)) / 2


__all__ = ["LinRegParams", "LinearRegression", "explained"]
