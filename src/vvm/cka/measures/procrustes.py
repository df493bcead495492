"""Orthogonal Procrustes similarity (Ding et al. 2021; Williams et al. 2021's angular shape metric).

Per pool of ``n`` examples (``measure.procrustes.n``), with centred representations ``Xc``, ``Yc`` (zero-padded
to the same width where they differ, which changes nothing below):

``P(X, Y) = max_R ⟨Xc, Yc R⟩ / (‖Xc‖_F ‖Yc‖_F) = ‖Xcᵀ Yc‖_* / (‖Xc‖_F ‖Yc‖_F)``,

``R`` orthogonal (the nuclear norm is the optimal alignment's inner product, Schönemann 1966). ``statistic``:
``similarity`` (default, in ``[0, 1]``, 1 when one representation is a rotation/reflection and scaling of the
other) or ``angle``: Williams et al.'s angular distance ``arccos P`` in radians (a metric; averaged over pools
as it is, so not ``arccos`` of the mean similarity). ``1 - P`` is Ding et al.'s Procrustes distance
``‖Xc/‖Xc‖ - Yc/‖Yc‖ R‖²/2`` at the optimum.

From the Grams alone (:mod:`.subspace`): ``Xc = L_x W_xᵀ`` with ``L_x = Q_x Λ_x^½`` and ``W_x`` orthonormal, so
``‖Xcᵀ Yc‖_* = ‖L_xᵀ L_y‖_*`` and ``‖Xc‖_F² = tr K_x``. Unlike the CCA family it is not invariant to
non-orthogonal maps, and wide layers do not all score 1.

Memory and cost per pool: :mod:`.subspace` (an SVD of ``r_x x r_y`` per pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vvm.cka.measures.base import option, register_measure
from vvm.cka.measures.cca import pool_size
from vvm.cka.measures.subspace import Basis, PairMeasure


def procrustes_similarity(bx: Basis, by: Basis) -> float:
    """``‖L_xᵀ L_y‖_* / √(tr K_x tr K_y)`` (at most 1 up to rounding)."""
    nuclear = torch.linalg.svdvals(bx.factor().T @ by.factor()).sum()
    return float(nuclear / torch.sqrt(bx.trace * by.trace))


@dataclass(frozen=True)
class ProcrustesParams:
    statistic: str = option(
        "similarity",
        choices=("similarity", "angle"),
        why="similarity: ||XcᵀYc||_* / (||Xc|| ||Yc||); angle: its "
        "arccos (Williams et al. 2021's angular shape distance, radians)",
    )
    n: int = pool_size()


@register_measure
class Procrustes(PairMeasure):
    """The orthogonal Procrustes similarity (or angular distance) of two layers (see the module docstring)."""

    name = "procrustes"
    label = "Procrustes"
    Params = ProcrustesParams

    @property
    def min_reason(self) -> str:
        return "procrustes (an alignment of centred representations)"

    @property
    def min_n(self) -> int:
        return 3

    @property
    def title(self) -> str:
        return "Procrustes" if self.params.statistic == "similarity" else "Procrustes angle (radians)"

    def pair(self, bx: Basis, by: Basis) -> float:
        p = min(1.0, procrustes_similarity(bx, by))
        return p if self.params.statistic == "similarity" else math.acos(p)


__all__ = ["Procrustes", "ProcrustesParams", "procrustes_similarity"]
