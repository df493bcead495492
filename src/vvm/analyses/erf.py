"""Effective receptive fields (Luo, Li, Urtasun, Zemel 2016, "Understanding the Effective Receptive Field in
Deep Convolutional Neural Networks").

For a tracked layer with a spatial layout (a feature map, or ViT patch tokens on their grid; see
:mod:`vvm.analyses.common`), take the position at the centre of its map, ``(H // 2, W // 2)``, sum its output
over channels, and differentiate with respect to the network's input image (the model's own resolution and
normalisation: :meth:`VisionModel.preprocess`'s output). The map is ``|∂ y_centre / ∂ x|`` summed over the
colour channels and averaged over ``N`` images: ``[H_in, W_in]`` in input pixels.

In eval mode every example's output depends on its own image only, so the gradient of the batch's sum gives
each image's gradient at once: one backward per layer per batch, and each backward stops at its layer's depth
(parameter gradients are never computed).

Radii: the map's centre is its centre of mass (for a strided map the centre unit sits half a pixel off the
image's centre); ``radius_q`` is the smallest distance ``r`` from it such that the pixels within ``r`` hold at
least a fraction ``q`` of the map's mass (pixel centres, Euclidean distance), in pixels and as a fraction of
the image's longer side.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vvm.analyses.common import (
    Capture,
    analysis_mode,
    device_of,
    progress,
    relative_depth,
    spatial_map,
    split_model,
    token_grid,
)
from vvm.cka.presets import LayerSpec, resolve_layers

# the sum over channels of a LayerNorm output with a uniform scale (a random-init ViT's norm layers) is constant
ZERO_MAP = (
    "the sum of its centre position's channels does not depend on the image (e.g. a LayerNorm output with a "
    "uniform scale sums to a constant): map zero, radii NaN"
)


@dataclass
class ERFResult:
    """Per layer with a spatial layout, in tracked order: ``maps`` ``[L, H, W]`` (mean |gradient|, summed over
    colour channels), ``radius50``/``radius90`` in input pixels, ``centre`` ``[L, 2]`` (row, column of the map's
    centre of mass), ``grid`` ``[L, 2]`` (the layer's own map size), ``depth`` (relative depth among all
    tracked layers); ``skipped``: tracked layers without a spatial layout, with the reason; ``zero``: layers
    whose map is zero (radii NaN), with the reason."""

    layers: list[str]
    maps: np.ndarray
    radius50: np.ndarray
    radius90: np.ndarray
    centre: np.ndarray
    grid: np.ndarray
    depth: np.ndarray
    image_size: tuple[int, int]
    n_images: int
    skipped: dict[str, str] = field(default_factory=dict)
    zero: dict[str, str] = field(default_factory=dict)

    @property
    def side(self) -> int:
        return max(self.image_size)

    def arrays(self) -> dict[str, np.ndarray]:
        """What erf.npz holds."""
        return {
            "layers": np.array(self.layers, dtype=str),
            "maps": self.maps,
            "radius50": self.radius50,
            "radius90": self.radius90,
            "radius50_frac": self.radius50 / self.side,
            "radius90_frac": self.radius90 / self.side,
            "centre": self.centre,
            "grid": self.grid,
            "depth": self.depth,
            "image_size": np.array(self.image_size),
            "n_images": np.array(self.n_images),
            "skipped": np.array(sorted(self.skipped), dtype=str),
            "zero": np.array(sorted(self.zero), dtype=str),
        }

    def summary(self) -> dict[str, Any]:
        """What result.json records: the radii per layer (pixels and fractions of the image side)."""
        return {
            "n_images": self.n_images,
            "image_size": list(self.image_size),
            "layers": self.layers,
            "radius50_px": _floats(self.radius50),
            "radius90_px": _floats(self.radius90),
            "radius50_frac": _floats(self.radius50 / self.side),
            "radius90_frac": _floats(self.radius90 / self.side),
            "skipped": dict(self.skipped),
            "zero": dict(self.zero),
        }


def _floats(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 4) for v in a]


def mass_centre(m: np.ndarray) -> np.ndarray:
    """The centre of mass (row, column) of a non-negative map, in pixel coordinates."""
    total = m.sum()
    rows, cols = np.indices(m.shape)
    return np.array([(rows * m).sum() / total, (cols * m).sum() / total])


def mass_radius(m: np.ndarray, q: float, centre: np.ndarray | None = None) -> float:
    """The smallest distance ``r`` from ``centre`` (default: the centre of mass) such that the pixels whose
    centres lie within ``r`` hold at least a fraction ``q`` of the map's mass; NaN for an all-zero map."""
    m = np.asarray(m, dtype=np.float64)
    total = m.sum()
    if not total > 0:
        return float("nan")
    c = mass_centre(m) if centre is None else np.asarray(centre, dtype=np.float64)
    rows, cols = np.indices(m.shape)
    dist = np.hypot(rows - c[0], cols - c[1]).ravel()
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(m.ravel()[order])
    k = int(np.searchsorted(cum, q * total * (1 - 1e-12)))  # first index reaching q (rounding forgiven)
    return float(dist[order][min(k, dist.size - 1)])


def _centre_seed(tokens: Any, grids: dict[str, tuple[int, int]]):
    """The hook's function: the layer's centre position summed over channels, ``[N]`` (None: no layout)."""

    def fn(name: str, out: Tensor) -> Tensor | None:
        sp = spatial_map(out, tokens)
        if sp is None:
            return None
        h, w = sp.shape[-2:]
        grids[name] = (int(h), int(w))
        return sp[:, :, h // 2, w // 2].sum(dim=1)

    return fn


def effective_receptive_fields(
    model: nn.Module, layers: LayerSpec, images: Tensor, *, batch_size: int = 32
) -> ERFResult:
    """The effective receptive field of every tracked layer of ``model`` with a spatial layout, averaged over
    ``images`` (dataset-normalised ``[N, 3, h, w]``, e.g. :func:`~vvm.analyses.common.first_images` of the
    datamodule's ``cka_batches()``)."""
    preprocess, net = split_model(model)
    names = resolve_layers(net, layers)
    grids: dict[str, tuple[int, int]] = {}
    sums: dict[str, Tensor] = {}
    order: list[str] = []
    device = device_of(net)
    with torch.inference_mode(False), torch.enable_grad(), analysis_mode(model):
        with Capture(net, names, _centre_seed(token_grid(net), grids)) as cap:
            for chunk in progress(images.split(max(1, int(batch_size))), "effective receptive fields"):
                x = preprocess(chunk.clone().to(device, torch.float32)).detach().requires_grad_(True)
                net(x)
                seeds = cap.take()
                order = list(seeds)
                for name, seed in seeds.items():
                    if seed is not None:
                        sums[name] = sums.get(name, 0) + _input_gradient(seed, x)
                del seeds, x
    return _result(order, sums, grids, images.shape[0])


def _input_gradient(seed: Tensor, x: Tensor) -> Tensor:
    """``Σ_n |∂ seed_n / ∂ x_n|`` summed over colour channels, float64 ``[H, W]`` (zeros if unconnected)."""
    (g,) = torch.autograd.grad(seed.sum(), x, retain_graph=True, allow_unused=True)
    if g is None:
        return torch.zeros(x.shape[-2:], dtype=torch.float64, device=x.device)
    return g.abs().sum(dim=1).sum(dim=0).double()


def _result(order: list[str], sums: dict[str, Tensor], grids: dict, n: int) -> ERFResult:
    layers = [name for name in order if name in sums]
    skipped = {name: "no spatial layout (a flat output)" for name in order if name not in sums}
    if not layers:
        raise ValueError(
            f"no tracked layer has a spatial layout (feature maps or patch tokens): {', '.join(order)}; "
            "track conv or transformer blocks for receptive fields"
        )
    maps = np.stack([(sums[name] / n).cpu().numpy() for name in layers])
    zero = {name: ZERO_MAP for name, m in zip(layers, maps) if not m.sum() > 0}
    for name in zero:
        warnings.warn(f"ERF: layer {name!r}: {ZERO_MAP}", stacklevel=3)
    centre = np.stack([mass_centre(m) if m.sum() > 0 else np.full(2, np.nan) for m in maps])
    return ERFResult(
        layers=layers,
        maps=maps,
        radius50=np.array([mass_radius(m, 0.5) for m in maps]),
        radius90=np.array([mass_radius(m, 0.9) for m in maps]),
        centre=centre,
        grid=np.array([grids[name] for name in layers]),
        depth=relative_depth(order, layers),
        image_size=(int(maps.shape[1]), int(maps.shape[2])),
        n_images=n,
        skipped=skipped,
        zero=zero,
    )
