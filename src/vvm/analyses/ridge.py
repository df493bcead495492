"""Ridge regression from float64 sufficient statistics streamed over batches (the linear probes'
classifier, :mod:`vvm.analyses.probe`): one-vs-rest ±1 targets, an unpenalised intercept, every ridge strength
of a grid solved from one eigendecomposition."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class RidgeStats:
    """Float64 sufficient statistics of features ``X`` ``[n, d]`` and targets ``Y`` ``[n, k]`` for ridge
    regression with an intercept; ``shift`` (the first batch's feature mean) is subtracted before summing."""

    def __init__(self, d: int, k: int, device: torch.device | str = "cpu") -> None:
        kw = dict(dtype=torch.float64, device=device)
        self.n = 0
        self.shift: Tensor | None = None
        self.sx, self.sy = torch.zeros(d, **kw), torch.zeros(k, **kw)
        self.xx, self.xy = torch.zeros(d, d, **kw), torch.zeros(d, k, **kw)

    def update(self, x: Tensor, y: Tensor) -> None:
        x = x.to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(dim=0)
        x = x - self.shift
        y = y.to(torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(dim=0)
        self.sy += y.sum(dim=0)
        self.xx.addmm_(x.T, x)
        self.xy.addmm_(x.T, y)

    def solve(self, ridges: Sequence[float]) -> tuple[Tensor, Tensor]:
        """Weights ``[g, d, k]`` and intercepts ``[g, k]`` for each absolute ridge strength:
        ``W = (X_cᵀX_c + λI)⁻¹ X_cᵀY_c``, ``b = ȳ − x̄ W`` (one eigendecomposition for all strengths)."""
        mx, my = self.sx / self.n, self.sy / self.n
        c = self.xx - self.n * torch.outer(mx, mx)
        b = self.xy - self.n * torch.outer(mx, my)
        evals, evecs = torch.linalg.eigh((c + c.T) / 2)
        proj = evecs.T @ b
        lam = torch.as_tensor(list(ridges), dtype=torch.float64, device=c.device)
        scale = 1.0 / (evals.clamp(min=0)[None, :] + lam[:, None])  # [g, d]
        w = torch.einsum("ij,gj,jk->gik", evecs, scale, proj)
        intercept = my[None, :] - (mx + self.shift)[None, None, :].matmul(w).squeeze(1)
        return w, intercept

    def scale(self) -> float:
        """The mean eigenvalue of the centred ``XᵀX`` (its trace / d); 1 for constant features."""
        mx = self.sx / self.n
        t = float((self.xx.diagonal() - self.n * mx * mx).sum()) / self.sx.numel()
        return t if t > 0 else 1.0


def one_vs_rest(labels: Tensor, k: int) -> Tensor:
    """±1 targets ``[n, k]``: +1 for the example's class, −1 for the others."""
    return 2.0 * torch.nn.functional.one_hot(labels.long(), k).double() - 1.0


__all__ = ["RidgeStats", "one_vs_rest"]
