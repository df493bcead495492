"""What a similarity metric's ``compute()`` returns: :class:`MatrixResult`, the part every measure shares (a
float64 ``[L_x, L_y]`` matrix over named layers with its standard error over batches), and :class:`CKAResult`,
CKA's (the other measures' :class:`~vvm.cka.measures.mean.MeasureResult` is in :mod:`vvm.cka.measures.mean`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
class MatrixResult:
    """What every result has: ``matrix`` and ``stderr`` (float64 ``[L_x, L_y]``), ``layers_x``/``layers_y``,
    ``n_samples``, ``n_batches``; and what it gives: an interval, the mean off the diagonal, its npz arrays.
    (Subclasses add ``activation_dtype``, the dtype(s) the hooks received, among their own fields.)"""

    matrix: Tensor
    stderr: Tensor
    layers_x: list[str]
    layers_y: list[str]
    n_samples: int
    n_batches: int

    # the npz keys of matrix and stderr (cka.npz names them cka and cka_stderr)
    matrix_key: ClassVar[str] = "matrix"
    stderr_key: ClassVar[str] = "stderr"

    def interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """``matrix ± t · stderr`` with ``t`` the Student quantile for ``n_batches - 1`` degrees of freedom: the
        interval treats batches as i.i.d. draws (random batches of the split) and the standard error as exact."""
        from scipy.stats import t as student_t

        q = float(student_t.ppf(0.5 + level / 2, max(self.n_batches - 1, 1)))
        return self.matrix - q * self.stderr, self.matrix + q * self.stderr

    def mean_offdiagonal(self) -> float:
        """Mean of the defined entries, leaving out the diagonal of a square matrix (NaN when none is defined)."""
        return mean_offdiagonal(self.matrix)

    def own_arrays(self) -> dict[str, np.ndarray]:
        """The arrays only this kind of result has (its statistics, parameters, per-batch values)."""
        return {}

    def arrays(self, **extra: Any) -> dict[str, np.ndarray]:
        """Its npz file's arrays: the matrix and standard error (float64), the layers, ``n_samples``,
        ``n_batches``, ``activation_dtype``, :meth:`own_arrays`, and ``extra`` (the job's names)."""
        return {
            self.matrix_key: self.matrix.numpy().astype(np.float64),
            self.stderr_key: self.stderr.numpy().astype(np.float64),
            "layers_x": np.array(self.layers_x, dtype=str),
            "layers_y": np.array(self.layers_y, dtype=str),
            "n_samples": np.array(self.n_samples),
            "n_batches": np.array(self.n_batches),
            "activation_dtype": np.array(getattr(self, "activation_dtype", "")),
            **self.own_arrays(),
            **{k: np.asarray(v) for k, v in extra.items()},
        }


def optional_arrays(res: Any, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The tensors of ``keys`` that ``res`` holds (not None), as arrays."""
    return {k: getattr(res, k).numpy() for k in keys if getattr(res, k, None) is not None}


# what a CKA result holds only sometimes: RBF bandwidths, per-batch HSIC values (for paired differences)
_CKA_OPTIONAL = (
    "rbf_sigma2_x",
    "rbf_sigma2_y",
    "batch_ids",
    "batch_weights",
    "batch_hsic_xy",
    "batch_hsic_xx",
    "batch_hsic_yy",
)


@dataclass
class CKAResult(MatrixResult):
    """A CKA matrix with its standard error and what it was estimated from.

    ``matrix`` (float64 ``[L_x, L_y]``) holds CKA; ``stderr`` its delta-method standard error across batches
    (NaN with fewer than two batches); ``layers_x``/``layers_y`` name the rows and columns; ``hsic_xx``/``hsic_yy``
    the batch-size-weighted mean self-HSIC of every layer. ``undefined_x``/``undefined_y`` list the layers whose
    self-HSIC is ≤ 0 (their rows/columns are NaN). ``activation_dtype`` names the dtype(s) the hooks received;
    ``rbf_sigma2_x``/``_y`` the RBF bandwidths used (fixed per layer, or those of the first batch with
    the rbf kernel's ``bandwidth="per_batch"``). ``batch_*`` hold the per-batch HSIC values (weights ``batch_weights``, global
    batch ids ``batch_ids``) when they were kept: they give paired standard errors of differences.
    """

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

    matrix_key: ClassVar[str] = "cka"
    stderr_key: ClassVar[str] = "cka_stderr"

    def __post_init__(self) -> None:
        self.undefined_x = [n for n, h in zip(self.layers_x, self.hsic_xx.tolist()) if not h > 0]
        self.undefined_y = [n for n, h in zip(self.layers_y, self.hsic_yy.tolist()) if not h > 0]

    def own_arrays(self) -> dict[str, np.ndarray]:
        """cka.npz's own: ``hsic_xx``, ``hsic_yy``, ``kernel``, ``estimator``, the RBF bandwidths (and their rule)
        and the per-batch HSIC values when held."""
        out = {
            "hsic_xx": self.hsic_xx.numpy(),
            "hsic_yy": self.hsic_yy.numpy(),
            "kernel": np.array(self.kernel),
            "estimator": np.array(self.estimator),
        }
        if self.kernel == "rbf":
            out["rbf_bandwidth"] = np.array(self.rbf_bandwidth)
        return {**out, **optional_arrays(self, _CKA_OPTIONAL)}

    def __repr__(self) -> str:
        return (
            f"CKAResult({len(self.layers_x)}x{len(self.layers_y)} layers, n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, kernel={self.kernel!r}, estimator={self.estimator!r})"
        )
