"""CKAResult: what a CKA metric's ``compute()`` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor


def mean_offdiagonal(matrix: Any) -> float:
    """Mean of the defined entries of a CKA matrix (NaN when none is), leaving out the diagonal of a square
    one; every entry of a non-square (cross-model) matrix counts."""
    m = np.asarray(matrix.numpy() if isinstance(matrix, Tensor) else matrix, dtype=float)
    mask = ~np.eye(*m.shape, dtype=bool) if m.shape[0] == m.shape[1] else np.ones(m.shape, dtype=bool)
    vals = m[mask & ~np.isnan(m)]
    return float(vals.mean()) if vals.size else math.nan


@dataclass
class CKAResult:
    """A CKA matrix with its standard error and what it was estimated from.

    ``matrix`` (float64 ``[L_x, L_y]``) holds CKA; ``stderr`` its delta-method standard error across batches
    (NaN with fewer than two batches); ``layers_x``/``layers_y`` name the rows and columns; ``hsic_xx``/``hsic_yy``
    the batch-size-weighted mean self-HSIC of every layer. ``undefined_x``/``undefined_y`` list the layers whose
    self-HSIC is ≤ 0 (their rows/columns are NaN). ``activation_dtype`` names the dtype(s) the hooks received;
    ``rbf_sigma2_x``/``_y`` the RBF bandwidths used (fixed per layer, or those of the first batch with
    ``rbf_bandwidth="per_batch"``). ``batch_*`` hold the per-batch HSIC values (weights ``batch_weights``, global
    batch ids ``batch_ids``) when they were kept: they give paired standard errors of differences.
    """

    matrix: Tensor
    stderr: Tensor
    layers_x: list[str]
    layers_y: list[str]
    n_samples: int
    n_batches: int
    hsic_xx: Tensor
    hsic_yy: Tensor
    kernel: str
    estimator: str
    activation_dtype: str = ""
    rbf_bandwidth: str = "fixed"
    rbf_sigma2_x: Tensor | None = None
    rbf_sigma2_y: Tensor | None = None
    batch_ids: Tensor | None = None
    batch_weights: Tensor | None = None
    batch_hsic_xy: Tensor | None = None
    batch_hsic_xx: Tensor | None = None
    batch_hsic_yy: Tensor | None = None
    undefined_x: list[str] = field(init=False)
    undefined_y: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.undefined_x = [n for n, h in zip(self.layers_x, self.hsic_xx.tolist()) if not h > 0]
        self.undefined_y = [n for n, h in zip(self.layers_y, self.hsic_yy.tolist()) if not h > 0]

    def interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """``matrix ± t · stderr`` with ``t`` the Student quantile for ``n_batches - 1`` degrees of freedom: the
        interval treats batches as i.i.d. draws (random batches of the split) and the delta method as exact."""
        from scipy.stats import t as student_t

        q = float(student_t.ppf(0.5 + level / 2, max(self.n_batches - 1, 1)))
        return self.matrix - q * self.stderr, self.matrix + q * self.stderr

    def mean_offdiagonal(self) -> float:
        """Mean of the defined entries, leaving out the diagonal of a square matrix (NaN when none is defined)."""
        return mean_offdiagonal(self.matrix)

    def __repr__(self) -> str:
        return (
            f"CKAResult({len(self.layers_x)}x{len(self.layers_y)} layers, n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, kernel={self.kernel!r}, estimator={self.estimator!r})"
        )
