"""How sure a per-layer accuracy is, and whether two layers differ: the binomial standard error of an accuracy on
``n`` independent examples, and two classifiers compared on the *same* examples (the paired difference, its
standard error, McNemar's exact test). Used by the linear probe (:mod:`vvm.analyses.probe`)."""

from __future__ import annotations

import math

import numpy as np

# two layers whose McNemar p-value is at least this are "not separable" on the evaluation examples
SEPARABLE_P = 0.05


def binomial_se(accuracy: np.ndarray | float, n: int) -> np.ndarray:
    """The binomial standard error of an accuracy measured on ``n`` independent examples:
    ``sqrt(a (1 − a) / n)``."""
    a = np.asarray(accuracy, dtype=np.float64)
    return np.sqrt(a * (1 - a) / n)


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for ``b`` and ``c`` discordant pairs: ``min(1, 2 P(X ≤ min(b, c)))``,
    ``X ~ Binomial(b + c, 1/2)`` (summed in log space: exact for any ``b + c``); 1 when there are none."""
    n, k = int(b) + int(c), min(int(b), int(c))
    if n == 0:
        return 1.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, 2.0 * math.exp(top) * sum(math.exp(v - top) for v in logs))


def paired_comparison(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, float]:
    """Layer a against layer b on the same evaluation examples (boolean ``[n]`` each): the accuracy difference
    ``(b − c) / n``, its paired standard error ``sqrt(b + c − (b − c)² / n) / n`` and McNemar's exact p-value,
    with ``b`` (``c``) the examples only a (only b) gets right."""
    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    n = right_a.size
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    return {
        "difference": (b - c) / n,
        "difference_se": math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n,
        "mcnemar_p": mcnemar_exact(b, c),
        "only_a": b,
        "only_b": c,
    }
