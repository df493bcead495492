"""RBF bandwidths: one kernel per layer.

``σ² = frac² · median`` of the off-diagonal squared distances (Kornblith et al. 2019). With ``mode="fixed"``
(the default) each layer's σ² is taken from the first batch (a random sample of the split) and used for every
batch, so every batch estimates HSIC of the same kernel; under DDP rank 0's first batch (the first batch of
the split) decides, broadcast to the other ranks, so any number of processes uses the same kernels. Every rank
joins that broadcast on its own first batch, also when that batch is skipped as too small for the estimator
(:meth:`Bandwidths.join`): a rank that never joined would leave the others waiting for ever. When rank 0's
first batch is itself too small there is no bandwidth to share, and every rank raises the same error.
``mode="per_batch"`` re-estimates σ² on every batch (the kernel then depends on the batch's composition); the
σ² recorded (:attr:`Bandwidths.sigma2`, the result's ``rbf_sigma2_*``) are the first batch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vvm.cka.functional import rbf_kernels, rbf_sigma2

BANDWIDTH_MODES = ("fixed", "per_batch")


def check_bandwidth_mode(mode: str) -> None:
    if mode not in BANDWIDTH_MODES:
        raise ValueError(f"bandwidth={mode!r} is not supported: use one of {', '.join(BANDWIDTH_MODES)}")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _from_rank_zero(t: Tensor) -> Tensor:
    """Rank 0's ``t`` on every rank; NaN from rank 0 (its first batch was too small) is an error on all."""
    import torch.distributed as dist

    if not _distributed():
        return t
    t = t.contiguous()
    dist.broadcast(t, src=0)
    if bool(torch.isnan(t).any()):
        raise ValueError(
            "RBF CKA with a fixed bandwidth under DDP takes σ² from rank 0's first batch, and that batch has fewer "
            "examples than the estimator needs: give every batch enough examples (similarity.batch_size, "
            "similarity.max_samples), or use the rbf kernel's bandwidth=per_batch"
        )
    return t


class Bandwidths:
    """σ² per layer for each side (``x``, ``y``, or a model key), fixed on the first batch or per batch."""

    def __init__(self, frac: float, mode: str = "fixed") -> None:
        if not frac > 0:
            raise ValueError(f"frac={frac} must be a number > 0")
        check_bandwidth_mode(mode)
        self.frac = float(frac)
        self.mode = mode
        self.sigma2: dict[str, Tensor] = {}

    def kernels(self, side: str, linear: Tensor) -> Tensor:
        """RBF kernels ``[L, n, n]`` from the linear Grams ``[L, n, n]`` of one side."""
        if self.mode == "per_batch":
            s2 = rbf_sigma2(linear, self.frac)
            self.sigma2.setdefault(side, s2)  # recorded: the first batch's (the kernel: this batch's)
            return rbf_kernels(linear, s2)
        if side not in self.sigma2:
            self.sigma2[side] = _from_rank_zero(rbf_sigma2(linear, self.frac))
        return rbf_kernels(linear, self.sigma2[side])

    def join(self, side: str, n_layers: int, *, device: torch.device, dtype: torch.dtype) -> None:
        """A rank whose first batch was skipped (too small) takes part in rank 0's broadcast of ``side``'s
        fixed σ² all the same, and keeps what rank 0 sends (nothing to do in one process or per batch)."""
        if self.mode != "fixed" or side in self.sigma2 or not _distributed():
            return
        nothing = torch.full((n_layers,), float("nan"), dtype=dtype, device=device)
        self.sigma2[side] = _from_rank_zero(nothing)
