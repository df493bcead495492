"""Similarity measures between layers, computed in one pass from the recorder's per-batch Grams.

- ``cka`` (:mod:`.cka`): minibatch CKA, the kernel's HSIC ratio (Kornblith et al. 2019, Nguyen et al. 2021);
- ``rsa`` (:mod:`.rsa`): the rank (or linear) correlation of the pairwise distances (Kriegeskorte et al. 2008);
- ``knn`` (:mod:`.knn`): mutual k-nearest-neighbour alignment (Huh et al. 2024);
- ``cca`` (:mod:`.cca`), ``svcca`` (:mod:`.svcca`), ``pwcca`` (:mod:`.pwcca`): the CCA family (mean canonical
  correlation or R²_CCA; Raghu et al. 2017; Morcos et al. 2018), ``linreg`` (:mod:`.linreg`): least-squares R²,
  ``procrustes`` (:mod:`.procrustes`): orthogonal Procrustes similarity or angle; pair by pair from each layer's
  Gram (:mod:`.subspace`).

A measure is one file here with a class decorated ``@register_measure`` (:mod:`.base`), and its import below:
the registration. Everything downstream (settings, files, figures, loggers, ``vvm.diff``, the sweep summary,
``vvm.joint``) is keyed by the measure's name.
"""

from typing import Any

from vvm.cka.measures import cca, cka, knn, linreg, procrustes, pwcca, rsa, svcca  # noqa: F401 - importing a measure's module registers it
from vvm.cka.measures.base import (
    MEASURES,
    Grams,
    Measure,
    ProductMeasure,
    make_measure,
    option,
    register_measure,
)


def __getattr__(name: str) -> Any:
    """``BatchMeanMetric``, ``MeasureResult``, ``weighted_mean_stderr`` (:mod:`.mean`, which imports torchmetrics)
    on first use (PEP 562): the registry lists the measures' names without it."""
    if name not in ("BatchMeanMetric", "MeasureResult", "weighted_mean_stderr"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from vvm.cka.measures import mean

    value = getattr(mean, name)
    globals()[name] = value
    return value


__all__ = [
    "MEASURES",
    "BatchMeanMetric",
    "Grams",
    "Measure",
    "MeasureResult",
    "ProductMeasure",
    "make_measure",
    "option",
    "register_measure",
    "weighted_mean_stderr",
]
