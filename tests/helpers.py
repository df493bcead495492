"""Small models for the tests: a module tree that replays given features, layer by layer."""

from __future__ import annotations

import torch
from torch import nn


class Pick(nn.Module):
    def __init__(self, i: int) -> None:
        super().__init__()
        self.i = i

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return feats[self.i]


class Replay(nn.Module):
    """``Replay(L)(feats)`` runs L submodules ``l0..l{L-1}``; submodule i outputs ``feats[i]``."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"l{i}", Pick(i))
        self.n_layers = n_layers

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = [getattr(self, f"l{i}")(feats) for i in range(self.n_layers)]
        return outs[-1]

    def layer_presets(self) -> dict[str, list[str]]:
        names = [f"l{i}" for i in range(self.n_layers)]
        return {"blocks": names, "all": names, "seed": names}


class Twice(nn.Module):
    """Runs the same ReLU twice in one forward pass (as torchvision's BasicBlock does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.lin2 = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.lin2(self.relu(self.lin1(x))))


def make_layer_batches(batch_sizes, dims, seed=0, dtype=torch.float32):
    """Per batch, per layer features that share a latent factor (so CKA is informative)."""
    g = torch.Generator().manual_seed(seed)
    mixes = [torch.randn(4, d, generator=g, dtype=torch.float64) for d in dims]
    batches = []
    for n in batch_sizes:
        z = torch.randn(n, 4, generator=g, dtype=torch.float64)
        feats = []
        for k, (d, mix) in enumerate(zip(dims, mixes)):
            f = z @ mix + (0.3 + 0.3 * k) * torch.randn(n, d, generator=g, dtype=torch.float64)
            if k % 2:
                f = torch.relu(f)
            feats.append(f.to(dtype))
        batches.append(feats)
    return batches
