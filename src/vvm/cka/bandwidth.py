"""RBF bandwidths: one kernel per layer.

``σ² = frac² · median`` of the off-diagonal squared distances (Kornblith et al. 2019). With ``mode="fixed"``
(the default) each layer's σ² is taken from the first batch (a random sample of the split) and used for every
batch, so every batch estimates HSIC of the same kernel; under DDP rank 0's first batch (the first batch of
the split) decides, broadcast to the other ranks, so any number of processes uses the same kernels.
``mode="per_batch"`` re-estimates σ² on every batch (the kernel then depends on the batch's composition); the
σ² recorded (:attr:`Bandwidths.sigma2`, the result's ``rbf_sigma2_*``) are the first batch's.
"""

from __future__ import annotations

from torch import Tensor

from vvm.cka.functional import rbf_kernels, rbf_sigma2

BANDWIDTH_MODES = ("fixed", "per_batch")


def check_bandwidth_mode(mode: str) -> None:
    if mode not in BANDWIDTH_MODES:
        raise ValueError(f"rbf_bandwidth={mode!r} is not supported: use one of {', '.join(BANDWIDTH_MODES)}")


def _from_rank_zero(t: Tensor) -> Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.contiguous()
        dist.broadcast(t, src=0)
    return t


class Bandwidths:
    """σ² per layer for each side (``x``, ``y``, or a model key), fixed on the first batch or per batch."""

    def __init__(self, frac: float, mode: str = "fixed") -> None:
        if not frac > 0:
            raise ValueError(f"rbf_frac={frac} must be a number > 0")
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
