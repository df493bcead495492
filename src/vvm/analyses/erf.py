"""Effective receptive fields (Luo, Li, Urtasun, Zemel 2016, "Understanding the Effective Receptive Field in
Deep Convolutional Neural Networks").

For a tracked layer with a spatial layout (a feature map, or ViT patch tokens on their grid; see
:mod:`vvm.analyses.common`), take the position at the centre of its map, ``(H // 2, W // 2)``, and differentiate
its output with respect to the network's input image (the model's own resolution and normalisation:
:meth:`VisionModel.preprocess`'s output). Two definitions (``mode``):

- ``unit`` (the default, Luo et al.'s): the mean over output units (channels) ``c`` of ``|∂ y_c,centre / ∂ x|``,
  the absolute value taken per unit. All ``C`` channels of every image would cost ``C`` backwards per layer and
  batch, so each layer draws an unbiased random sample of ``units`` of its channels (all of them when it has no
  more; seeded by ``seed`` and the layer's name, so the sample does not depend on the other tracked layers), and
  each backward pass gives every image the gradient of *one* sampled channel: image ``i`` (its place in the
  image order) in pass ``r`` of ``units_per_image`` (at most the sample's size ``U``) takes channel
  ``sample[(i · units_per_image + r) mod U]``, cycling through the sample so that every sampled channel is used
  as often as the others (±1). The map is the mean over those ``n_images · units_per_image`` (image, unit)
  pairs: an unbiased estimate of the per-unit ERF averaged over units and images, at ``units_per_image``
  backwards per layer and batch (the defaults, 64 units and 1 per image, cost what the channel sum costs). With
  ``units`` and ``units_per_image`` at least ``C`` every image takes every channel once: the exact mean over
  units.
- ``channel_sum``: ``|∂ (Σ_c y_c,centre) / ∂ x|``, the ERF of the channel sum (signs cancel before the absolute
  value: narrower than the per-unit ERF, up to 1.9× on a ResNet-18 block); one backward per layer and batch.

Either map is summed over the colour channels and averaged: ``[H_in, W_in]`` in input pixels. The files record
the mode, the channels of each layer and the units used.

In eval mode every example's output depends on its own image only, so the gradient of a sum over the batch gives
each image's gradient at once: one backward per layer per pass, and each backward stops at its layer's depth
(parameter gradients are never computed).

Radii: the map's centre is its centre of mass (for a strided map the centre unit sits half a pixel off the
image's centre); ``radius_q`` is the smallest distance ``r`` from it such that the pixels within ``r`` hold at
least a fraction ``q`` of the map's mass (pixel centres, Euclidean distance), in pixels and as a fraction of
the image's longer side.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vvm.analyses.common import (
    Capture,
    analysis_mode,
    device_of,
    first_images,
    progress,
    relative_depth,
    spatial_map,
    split_model,
    token_grid,
)
from vvm.analyses.registry import Analysis, SweepPanels, register_analysis
from vvm.cka.params import option
from vvm.cka.presets import LayerSpec, resolve_layers

DEFINITIONS = {
    "unit": "mean over sampled output channels c of |d y_c,centre / d x| (Luo et al. 2016, per unit)",
    "channel_sum": "|d (sum_c y_c,centre) / d x|: the ERF of the channel sum",
}
ERF_MODES = tuple(
    DEFINITIONS
)  # the definitions of the effective receptive field: per unit, or the channel sum's
# the sum over channels of a LayerNorm output with a uniform scale (a random-init ViT's norm layers) is constant
ZERO_MAP = {
    "channel_sum": "the sum of its centre position's channels does not depend on the image (e.g. a LayerNorm "
    "output with a uniform scale sums to a constant): map zero, radii NaN",
    "unit": "none of its sampled centre units responds to these images (dead ReLUs, or units that do not depend "
    "on the image): map zero, radii NaN; more images or analysis.erf.units_per_image sample more units",
}


@dataclass
class ERFResult:
    """Per layer with a spatial layout, in tracked order: ``maps`` ``[L, H, W]`` (mean |gradient|, summed over
    colour channels), ``radius50``/``radius90`` in input pixels, ``centre`` ``[L, 2]`` (row, column of the map's
    centre of mass), ``grid`` ``[L, 2]`` (the layer's own map size), ``depth`` (relative depth among all
    tracked layers); ``skipped``: tracked layers without a spatial layout, with the reason; ``zero``: layers
    whose map is zero (radii NaN), with the reason; ``mode`` (``unit`` or ``channel_sum``), ``channels``
    ``[L]`` (each layer's output channels), ``units`` ``[L]`` (the channels sampled; all of them for
    ``channel_sum``), ``units_per_image`` (the backward passes per batch; 1 for ``channel_sum``), ``sampled``
    ``[L, max units]``: the channels sampled, in the order images take them (−1 pads; empty for ``channel_sum``)."""

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
    mode: str = "unit"
    channels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    units: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    units_per_image: int = 1
    sampled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

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
            "mode": np.array(self.mode),
            "definition": np.array(DEFINITIONS[self.mode]),
            "channels": self.channels,
            "units": self.units,
            "units_per_image": np.array(self.units_per_image),
            "sampled": self.sampled,
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
            "mode": self.mode,
            "definition": DEFINITIONS[self.mode],
            "channels": [int(c) for c in self.channels],
            "units": [int(u) for u in self.units],
            "units_per_image": self.units_per_image,
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


def _centre(tokens: Any, grids: dict[str, tuple[int, int]]):
    """The hook's function: the layer's channels at its centre position, ``[N, C]`` (None: no layout)."""

    def fn(name: str, out: Tensor) -> Tensor | None:
        sp = spatial_map(out, tokens)
        if sp is None:
            return None
        h, w = sp.shape[-2:]
        grids[name] = (int(h), int(w))
        return sp[:, :, h // 2, w // 2]

    return fn


class UnitSample:
    """Which output channel each image's gradient is taken of (``mode=unit``): per layer a seeded random sample
    of ``units`` of its channels (seeded by ``seed`` and the layer's name), image ``i`` in pass ``r`` taking
    ``sample[(i · per_image + r) mod len(sample)]``, in ``min(per_image, len(sample))`` passes."""

    def __init__(self, units: int, per_image: int, seed: int = 0) -> None:
        if units < 1 or per_image < 1:
            raise ValueError(f"ERF units={units}, units_per_image={per_image}: use positive numbers")
        self.units, self.per_image, self.seed = int(units), int(per_image), int(seed)
        self.samples: dict[str, np.ndarray] = {}

    def sample(self, name: str, channels: int) -> np.ndarray:
        if name not in self.samples:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            self.samples[name] = rng.permutation(channels)[: self.units]
        return self.samples[name]

    def passes(self, name: str, channels: int) -> int:
        """Backward passes for the layer: ``per_image``, at most its sample's size (no unit taken twice)."""
        return min(self.per_image, self.sample(name, channels).size)

    def channels(self, name: str, channels: int, start: int, n: int, r: int) -> Tensor:
        """``[n]`` channel indices of images ``start .. start + n − 1`` in pass ``r``."""
        s = self.sample(name, channels)
        i = (np.arange(start, start + n) * self.per_image + r) % s.size
        return torch.as_tensor(s[i], dtype=torch.long)


def _seeds(centre: Tensor, name: str, units: UnitSample | None, start: int) -> list[Tensor]:
    """The ``[N]`` outputs to differentiate, one per backward pass: the channel sum, or one sampled unit per
    image in each of the layer's passes."""
    if units is None:
        return [centre.sum(dim=1)]
    n, c = centre.shape
    return [
        centre.gather(1, units.channels(name, c, start, n, r).to(centre.device)[:, None]).squeeze(1)
        for r in range(units.passes(name, c))
    ]


def effective_receptive_fields(
    model: nn.Module,
    layers: LayerSpec,
    images: Tensor,
    *,
    batch_size: int = 32,
    mode: str = "unit",
    units: int = 64,
    units_per_image: int = 1,
    seed: int = 0,
) -> ERFResult:
    """The effective receptive field of every tracked layer of ``model`` with a spatial layout, averaged over
    ``images`` (dataset-normalised ``[N, 3, h, w]``, e.g. :func:`~vvm.analyses.common.first_images` of the
    datamodule's ``cka_batches()``): per unit (``mode="unit"``: ``units`` channels sampled per layer with
    ``seed``, ``units_per_image`` backwards per batch) or of the channel sum (``mode="channel_sum"``)."""
    if str(mode) not in ERF_MODES:
        raise ValueError(f"ERF mode={mode!r}: choose from {', '.join(ERF_MODES)}")
    mode = str(mode)
    sampler = UnitSample(units, units_per_image, seed) if mode == "unit" else None
    preprocess, net = split_model(model)
    names = resolve_layers(net, layers)
    grids: dict[str, tuple[int, int]] = {}
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}  # (image, unit) gradients summed per layer
    widths: dict[str, int] = {}
    order: list[str] = []
    device, start = device_of(net), 0
    with torch.inference_mode(False), torch.enable_grad(), analysis_mode(model):
        with Capture(net, names, _centre(token_grid(net), grids)) as cap:
            for chunk in progress(images.split(max(1, int(batch_size))), "effective receptive fields"):
                x = preprocess(chunk.clone().to(device, torch.float32)).detach().requires_grad_(True)
                net(x)
                centres = cap.take()
                order = list(centres)
                for name, centre in centres.items():
                    if centre is not None:
                        widths[name] = int(centre.shape[1])
                        for seed_out in _seeds(centre, name, sampler, start):
                            sums[name] = sums.get(name, 0) + _input_gradient(seed_out, x)
                            counts[name] = counts.get(name, 0) + seed_out.shape[0]
                start += chunk.shape[0]
                del centres, x
    res = _result(order, sums, counts, grids, images.shape[0], mode)
    res.units_per_image = sampler.per_image if sampler else 1
    res.channels = np.array([widths[n] for n in res.layers], dtype=np.int64)
    if sampler is None:
        res.units = res.channels.copy()
        return res
    picks = [sampler.sample(n, c) for n, c in zip(res.layers, res.channels)]
    res.units = np.array([p.size for p in picks], dtype=np.int64)
    res.sampled = np.full((len(picks), int(res.units.max())), -1, dtype=np.int64)
    for i, p in enumerate(picks):
        res.sampled[i, : p.size] = p
    return res


def _input_gradient(seed: Tensor, x: Tensor) -> Tensor:
    """``Σ_n |∂ seed_n / ∂ x_n|`` summed over colour channels, float64 ``[H, W]`` (zeros if unconnected)."""
    (g,) = torch.autograd.grad(seed.sum(), x, retain_graph=True, allow_unused=True)
    if g is None:
        return torch.zeros(x.shape[-2:], dtype=torch.float64, device=x.device)
    return g.abs().sum(dim=1).sum(dim=0).double()


def _result(
    order: list[str], sums: dict[str, Tensor], counts: dict[str, int], grids: dict, n: int, mode: str
) -> ERFResult:
    layers = [name for name in order if name in sums]
    skipped = {name: "no spatial layout (a flat output)" for name in order if name not in sums}
    if not layers:
        raise ValueError(
            f"no tracked layer has a spatial layout (feature maps or patch tokens): {', '.join(order)}; "
            "track conv or transformer blocks for receptive fields"
        )
    maps = np.stack([(sums[name] / counts[name]).cpu().numpy() for name in layers])
    zero = {name: ZERO_MAP[mode] for name, m in zip(layers, maps) if not m.sum() > 0}
    for name in zero:
        warnings.warn(f"ERF: layer {name!r}: {ZERO_MAP[mode]}", stacklevel=3)
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
        mode=mode,
    )


@dataclass(frozen=True)
class ERFParams:
    """``analysis.erf.*``: ``n_images``: images averaged (the first of the CKA pass's order); ``batch_size``:
    images per forward/backward pass (memory: every tracked layer's activations of a batch are kept for the
    backwards); ``mode``: ``unit`` (Luo et al.'s per-unit ERF, averaged over a seeded sample of ``units``
    channels per layer, ``units_per_image`` of them per image: that many backwards per layer and batch) or
    ``channel_sum`` (the ERF of the sum over channels)."""

    n_images: int = option(64, minimum=1, why="images averaged")
    batch_size: int = option(32, minimum=1, why="images per forward/backward pass")
    mode: str = option(
        "unit",
        choices=ERF_MODES,
        why="unit (mean over sampled channels of |d y_c / d x|, Luo et al.) | channel_sum (|d sum_c y_c / d x|)",
    )
    units: int = option(64, minimum=1, why="channels sampled per layer (all when a layer has fewer)")
    units_per_image: int = option(
        1, minimum=1, why="sampled channels per image: backwards per layer and batch"
    )


@register_analysis
class ERF(Analysis):
    """Effective receptive fields of the tracked layers, over the first ``n_images`` of the CKA pass's order."""

    name = "erf"
    title = "effective receptive fields"
    Params = ERFParams
    sweep = SweepPanels(
        panels=(
            ("radius50", "ERF radius holding 50% (fraction of image)"),
            ("radius90", "ERF radius holding 90% (fraction of image)"),
        ),
        needs=("depth", "radius50", "radius90", "image_size"),
        scale="image_size",
    )

    def run(self, model: nn.Module, layers: LayerSpec, dm: Any, params: ERFParams, seed: int) -> ERFResult:
        p = params
        images = first_images(dm.cka_batches(), p.n_images)
        kw = dict(batch_size=p.batch_size, mode=p.mode, units=p.units, units_per_image=p.units_per_image)
        return effective_receptive_fields(model, layers, images, seed=seed, **kw)

    def figure(self, arrays: Any, title: str | None = None) -> Any:
        from vvm.plots.analyses import erf_figure

        return erf_figure(arrays, title=title)

    def scalars(self, entry: Any) -> dict[str, float]:
        """The radii of the last layer with a map, as fractions of the image side."""
        return {
            f"{q}_last": float(entry[q][-1])
            for q in ("radius50_frac", "radius90_frac")
            if entry.get(q) and entry[q][-1] is not None
        }
