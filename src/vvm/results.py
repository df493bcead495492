"""Facts read off a CKA matrix, with no vvm imports: the modules that log, summarise or record a result all ask
here (the callback, the loggers, the pipeline, the sweep)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_offdiagonal(matrix: Any) -> float:
    """Mean of the off-diagonal entries that are defined (NaN when none is); every entry of a non-square
    (cross-model) matrix counts."""
    m = np.asarray(matrix, dtype=float)
    mask = ~np.eye(*m.shape, dtype=bool) if m.shape[0] == m.shape[1] else np.ones(m.shape, dtype=bool)
    vals = m[mask & ~np.isnan(m)]
    return float(vals.mean()) if vals.size else math.nan


__all__ = ["mean_offdiagonal"]
