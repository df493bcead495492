"""PWCCA (Morcos et al. 2018): canonical correlations weighted by how much of a representation each accounts for.

Per pool of ``n`` examples (``measure.pwcca.n``), with the canonical correlations ``ρ_i`` of two layers
(:mod:`.cca`; ``Q_xᵀ Q_y = U diag(ρ) Vᵀ``) and ``h_i = Q_x u_i`` the canonical variates of ``X`` (unit vectors
over the examples), Morcos et al. weigh ``ρ_i`` by ``α_i = Σ_j |⟨h_i, x_j⟩|``, ``x_j`` the activations of neuron
``j`` over the pool (centred: ``h_i`` is centred, so the mean changes nothing):

``PWCCA(X → Y) = Σ_i α_i ρ_i / Σ_i α_i``.

That weighs by the neurons as they are (an L1 norm over them), so it needs the features themselves, not only the
Gram: this measure keeps every tracked layer's activations of the pool (``needs_features``; memory: ``n · d``
per layer while the pool is processed, as the forward pass itself) and computes ``α`` from ``Xcᵀ Q_x`` (``d x
r``, once per layer and pool) times ``U`` (``O(d r m)`` per pair, ``m = min(r_x, r_y)``).

PWCCA is asymmetric (``α`` comes from one side). Google's reference code (``compute_pwcca``) takes the side with
fewer neurons; vvm reports the mean of both directions, ``(PWCCA(X → Y) + PWCCA(Y → X)) / 2``, so the matrix is
symmetric and a pair of equally wide layers does not depend on which is called ``X``. As every CCA-type index,
a pair of layers with at least as many features as examples has ``ρ_i = 1`` for all ``i``: PWCCA = 1.

Where canonical correlations tie, the canonical variates within the tied directions are any orthonormal basis of
them, and the L1 weights ``α`` depend on which one: PWCCA itself is not unique there (nor is it in Google's or
anatome's code; the SVD picks one). It happens for sure when ``r_x + r_y > n - 1``: the two column spaces then
share at least ``r_x + r_y - (n - 1)`` directions, each a canonical correlation of 1. The mean over pools
smooths it; a larger ``n`` avoids it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vvm.cka.measures.base import register_measure
from vvm.cka.measures.cca import pool_size
from vvm.cka.measures.subspace import Basis, PairMeasure


def weighted(b: Basis, directions: Tensor, rho: Tensor) -> Tensor:
    """``Σ α_i ρ_i / Σ α_i`` with ``α_i = ‖Xcᵀ Q u_i‖_1`` for the columns ``u_i`` of ``directions`` ``[r, m]``."""
    assert b.features is not None
    alpha = (b.features.T @ (b.q @ directions)).abs().sum(0)
    return (alpha * rho).sum() / alpha.sum()


def pwcca_pair(bx: Basis, by: Basis) -> tuple[float, float]:
    """``(PWCCA(X → Y), PWCCA(Y → X))`` of one pool."""
    u, rho, vh = torch.linalg.svd(bx.q.T @ by.q, full_matrices=False)
    rho = rho.clamp(0.0, 1.0)
    return float(weighted(bx, u, rho)), float(weighted(by, vh.T, rho))


@dataclass(frozen=True)
class PWCCAParams:
    n: int = pool_size("examples per pool (a layer with >= n features has the full rank n - 1: PWCCA = 1)")


@register_measure
class PWCCA(PairMeasure):
    """Projection-weighted CCA of two layers, the mean of both directions (see the module docstring)."""

    name = "pwcca"
    label = "PWCCA"
    Params = PWCCAParams
    needs_features = True

    @property
    def min_reason(self) -> str:
        return "pwcca (canonical correlations of centred representations)"

    @property
    def min_n(self) -> int:
        return 3

    @property
    def title(self) -> str:
        return "PWCCA (mean of both directions)"

    def pair(self, bx: Basis, by: Basis) -> float:
        return sum(pwcca_pair(bx, by)) / 2


__all__ = ["PWCCA", "PWCCAParams", "pwcca_pair", "weighted"]
