"""The plan of a pass whose measures need a declared sample size: pools of ``n`` examples, cut into CKA batches.

Mutual kNN's chance level is ``k/(n-1)`` and RSA's rank structure moves with ``n``: for them ``n`` is part of what
the number means (Huh et al. 2024 use 1,024 images), so such a measure (``pooled = True``) declares it
(``measure.<name>.n``) and is computed on pools of exactly that many examples, whatever ``similarity.batch_size`` is.

The pass's forward batches are the *units* of a :class:`PassPlan`: the seeded permutation cut into consecutive
pools of ``n`` examples (the whole pass in one pool when it holds fewer: ``n`` is then the number of examples,
and the files say so), then what is left over (fewer than ``n``), which only CKA reads. Each unit is cut again
into CKA's balanced batches of at most ``similarity.batch_size``, whose Grams are the diagonal blocks of the unit's
Gram (centring by the pool's mean or the batch's changes no HSIC). A unit is dealt to one rank whole, so every
example counts once and a pool never spans processes: the answer is the same on one process or several.

Memory, held while one unit is processed: the forward activations of ``n`` examples, every tracked layer's
``n x n`` Gram (``L n²`` numbers in the work dtype: 8 MiB per layer at ``n = 1024``, float64) and each pooled
measure's transform of it (kNN: ``L n²``; RSA: ``L n(n-1)/2``); nothing is kept between units except the sums
(and RSA's dissimilarities of the first pool, ``L n(n-1)/2`` float64, for ``rdms.npz``). Without pooled
measures the plan is CKA's own (one unit per batch) and nothing changes.

A pool-based measure (issue 31: CCA, SVCCA, PWCCA, regression, Procrustes) plugs in the same way: it is called
once per pool with the ``n x n`` Grams of every layer (:class:`~vvm.cka.measures.Grams`; the raw features'
Gram through ``needs_raw``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_POOL = 1024  # Huh et al. (2024): mutual kNN on a fixed set of 1,024 images


def balanced_sizes(n: int, batch_size: int) -> list[int]:
    """``ceil(n / batch_size)`` batch sizes that differ by at most one and sum to ``n``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if n <= 0:
        return []
    nb = math.ceil(n / batch_size)
    base, extra = divmod(n, nb)
    return [base + (1 if b < extra else 0) for b in range(nb)]


@dataclass(frozen=True)
class PassPlan:
    """Units (the forward batches) of a pass: ``unit_sizes``; ``pools`` how many of the first units are pools of
    ``pool_size`` examples (the rest is the leftover, CKA's only); ``declared`` the measures' declared ``n``;
    ``batch_size`` CKA's (each unit is cut into its balanced batches)."""

    unit_sizes: tuple[int, ...]
    pools: int
    pool_size: int
    declared: int
    batch_size: int

    def __post_init__(self) -> None:
        offsets, total = [], 0
        for size in self.unit_sizes:
            offsets.append(total)
            total += len(balanced_sizes(size, self.batch_size))
        object.__setattr__(self, "_offsets", tuple(offsets))
        object.__setattr__(self, "n_cka_batches", total)

    @property
    def n_units(self) -> int:
        return len(self.unit_sizes)

    @property
    def whole_split(self) -> bool:
        """The pass holds fewer examples than declared: one pool of all of them."""
        return self.pool_size < self.declared

    def is_pool(self, unit: int) -> bool:
        return 0 <= unit < self.pools

    def cka_batches(self, unit: int) -> list[tuple[int, int, int]]:
        """``(start, stop, global batch id)`` of CKA's batches within ``unit``."""
        out, start = [], 0
        for j, size in enumerate(balanced_sizes(self.unit_sizes[unit], self.batch_size)):
            out.append((start, start + size, self._offsets[unit] + j))  # type: ignore[attr-defined]
            start += size
        return out

    def facts(self) -> dict[str, Any]:
        """What a pooled measure's files record about its pools."""
        return {
            "pool_size": self.pool_size,
            "n_pools": self.pools,
            "n_declared": self.declared,
            "whole_split": self.whole_split,
        }


def plan_pass(n_examples: int, batch_size: int, declared: int) -> PassPlan:
    """Pools of ``declared`` examples (all ``n_examples`` in one pool when fewer), then the leftover."""
    if declared < 2:
        raise ValueError(f"a pool of n={declared} examples: use n >= 2")
    size = min(int(declared), int(n_examples))
    pools = n_examples // size if size else 0
    units = [size] * pools + ([n_examples - pools * size] if n_examples > pools * size else [])
    return PassPlan(tuple(units), pools, size, int(declared), int(batch_size))


def declared_pool(measures: Iterable[Any]) -> int | None:
    """The one ``n`` the pooled measures of a pass declare (None: none is pooled); different ``n`` are an error
    naming the keys (one pass has one pool plan)."""
    found = {f"measure.{m.name}.n": int(m.params.n) for m in measures if getattr(m, "pooled", False)}
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in found.items())
        raise ValueError(f"{listed}: the pooled measures of one pass share their pools: give them the same n")
    return next(iter(found.values()), None)


__all__ = ["DEFAULT_POOL", "PassPlan", "balanced_sizes", "declared_pool", "plan_pass"]
