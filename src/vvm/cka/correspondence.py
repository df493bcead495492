"""Facts of one cross-model block of a CKA matrix (rows: layers of network A, columns: layers of network B).

- :func:`best_matches`: for every layer of A, the layer of B with the highest CKA (the correspondence plot);
- :func:`mean_row_max`: the mean over A's layers of that best CKA;
- :func:`identification`: Kornblith et al. (2019)'s layer identification between two networks of one
  architecture: the fraction of layers whose best match in the other network is the same layer, both directions.

Ties. Layer lists can hold identical representations: an ``nn.Identity`` or an eval-mode dropout right after a
module (a ViT's ``attn.proj``/``attn.proj_drop``/``drop_path1`` in the ``seed`` preset) gives the same output
twice, so a row's maximum is shared and "the first maximum" is an arbitrary pick (two copies of one tiny ViT
scored 0.727 that way). So a layer counts as identified when its own entry is within a tolerance of its row's
maximum: one standard error of that maximum (the estimate's own uncertainty; the result's ``stderr``), plus
:data:`TIE_ATOL` for rounding. A row with more than one entry within the tolerance is a tie; their number is
reported. A layer that is undefined (NaN) in either network cannot be identified and is left out of the
denominator; with no layer left the accuracy is NaN, never 0.

The classifier counts as a layer when the layer list holds it (vvm's ``blocks`` preset does); Kornblith et al.
left the logits out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# absolute tolerance added to every row's: identical layers' CKA differs by float64 rounding at most
TIE_ATOL = 1e-9
TOLERANCE = "1 standard error of the row maximum + 1e-9"


def records(layers: list[str], module: str | None) -> bool:
    """Whether ``layers`` record ``module``: itself, one of its calls (``module#i``) or a submodule."""
    return module is not None and any(
        n == module or n.startswith((f"{module}#", f"{module}.")) for n in layers
    )


def best_matches(block: np.ndarray) -> np.ndarray:
    """For every row (a layer of A), the column (layer of B) with the highest CKA; -1 where a row is all NaN."""
    m = np.asarray(block, dtype=float)
    out = np.full(m.shape[0], -1)
    ok = ~np.all(np.isnan(m), axis=1)
    out[ok] = np.nanargmax(m[ok], axis=1)
    return out


def mean_row_max(block: np.ndarray) -> float:
    """The mean over A's layers of their best CKA with a layer of B (NaN rows left out)."""
    m = np.asarray(block, dtype=float)
    ok = ~np.all(np.isnan(m), axis=1)
    return float(np.nanmax(m[ok], axis=1).mean()) if ok.any() else math.nan


def near_max(block: np.ndarray, stderr: np.ndarray | None = None) -> np.ndarray:
    """``[L_a, L_b]`` booleans: the entries within the tolerance of their row's maximum (one standard error of
    the maximum, NaN counted as 0, plus :data:`TIE_ATOL`); all false on an all-NaN row."""
    m = np.asarray(block, dtype=float)
    out = np.zeros(m.shape, dtype=bool)
    ok = ~np.all(np.isnan(m), axis=1)
    if not ok.any():
        return out
    rows = np.flatnonzero(ok)
    best = np.nanargmax(m[ok], axis=1)
    top = m[rows, best]
    se = np.zeros_like(top) if stderr is None else np.asarray(stderr, dtype=float)[rows, best]
    tol = np.where(np.isfinite(se), np.abs(se), 0.0) + TIE_ATOL
    with np.errstate(invalid="ignore"):
        out[rows] = m[rows] >= (top - tol)[:, None]
    return out


@dataclass(frozen=True)
class Identification:
    """``accuracy = hits / layers`` over both directions (NaN when ``layers`` is 0); ``ties``: counted rows whose
    maximum is shared (more than one layer within the tolerance)."""

    accuracy: float
    hits: int
    layers: int
    ties: int


def identification(
    block: np.ndarray, layers_a: list[str], layers_b: list[str], stderr: np.ndarray | None = None
) -> Identification:
    """Kornblith et al. (2019)'s layer identification with ties (see the module docstring): NaN accuracy when
    the layer lists differ or no layer is defined in both networks."""
    if list(layers_a) != list(layers_b) or not layers_a:
        return Identification(math.nan, 0, 0, 0)
    m = np.asarray(block, dtype=float)
    se = None if stderr is None else np.asarray(stderr, dtype=float)
    defined = np.isfinite(np.diag(m))  # both layers defined: the same layer's entry is a number
    hits = ties = 0
    for blk, err in ((m, se), (m.T, None if se is None else se.T)):
        near = near_max(blk, err)
        hits += int(np.diag(near)[defined].sum())
        ties += int((near.sum(axis=1) > 1)[defined].sum())
    layers = 2 * int(defined.sum())
    return Identification(hits / layers if layers else math.nan, hits, layers, ties)


def layer_identification(
    block: np.ndarray, layers_a: list[str], layers_b: list[str], stderr: np.ndarray | None = None
) -> float:
    """The accuracy of :func:`identification`."""
    return identification(block, layers_a, layers_b, stderr).accuracy


__all__ = [
    "TIE_ATOL",
    "TOLERANCE",
    "Identification",
    "best_matches",
    "identification",
    "layer_identification",
    "mean_row_max",
    "near_max",
    "records",
]
