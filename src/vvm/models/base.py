"""VisionModel: a network plus its own input preprocessing (resolution and normalisation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VisionModel(nn.Module):
    """``net`` behind a preprocessing step, so that any dataset feeds any model.

    Datasets hand out images normalised with their own ``mean``/``std`` at their own resolution. When the
    network expects another normalisation (``mean``/``std`` here) or another ``input_size``, ``preprocess``
    undoes the dataset's normalisation, resizes on the device (bilinear, antialiased when shrinking) and applies
    the network's normalisation. CKA hooks go on ``net``, so layer names are the network's own.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        family: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.family = family or name
        self.input_size = input_size
        self.register_buffer("model_mean", _stat(mean), persistent=False)
        self.register_buffer("model_std", _stat(std), persistent=False)
        self.register_buffer("data_mean", None, persistent=False)
        self.register_buffer("data_std", None, persistent=False)
        self._model_norm = _values(mean, std)
        self._renorm = False  # set by set_data_normalization, on the host: no device comparison per batch

    def set_data_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Tell the model how the dataset normalised its images (needed only to re-normalise)."""
        device = next(self.net.parameters()).device if any(True for _ in self.net.parameters()) else None
        self.data_mean = _stat(mean, device)
        self.data_std = _stat(std, device)
        data_norm = _values(mean, std)
        self._renorm = None not in (self._model_norm, data_norm) and data_norm != self._model_norm

    def preprocess(self, x: Tensor) -> Tensor:
        renorm = self._renorm
        if renorm:
            x = x * self.data_std + self.data_mean
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            shrink = x.shape[-1] > self.input_size
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=shrink,
            )
        if renorm:
            x = (x - self.model_mean) / self.model_std
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.preprocess(x))

    def layer_presets(self) -> dict[str, list[str]]:
        from vvm.cka.presets import layer_presets

        return layer_presets(self.net)


def _values(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple | None:
    """``(mean, std)`` rounded to float32 as the buffers hold them (None without a mean), for comparing on the
    host."""
    if (mean is None) != (std is None):
        raise ValueError(f"a normalisation needs both mean and std, got mean={mean} and std={std}")
    if mean is None:
        return None
    return tuple(tuple(np.asarray(v, dtype=np.float32).tolist()) for v in (mean, std))


def _stat(values: Sequence[float] | None, device: torch.device | None = None) -> Tensor | None:
    if values is None:
        return None
    return torch.tensor(list(values), dtype=torch.float32, device=device).view(1, -1, 1, 1)
