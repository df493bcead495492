"""Mean attention distance (Dosovitskiy et al. 2021, Fig. 7; Raghu et al. 2021, Fig. 3) of every attention
module of a timm ViT.

For head ``h`` of a block, with ``a_ij`` the softmax attention weight of query token ``i`` on key token ``j`` and
``p`` the patch centres in input pixels::

    distance_h = mean over images and query patches i of  Σ_j a_ij · ‖p_i − p_j‖

Class and register tokens (timm's ``num_prefix_tokens``) are left out as queries and as keys. Leaving the
class token out as a key leaves each query's weights on the patches summing to ``1 − a_i,cls``; by default
they are renormalised to sum to 1 (``renormalised=True``: the expected distance of the key a query attends to,
among patches), else used as they are (the class token's share then counts as distance 0).

What the renormalisation hides is recorded beside the distance: ``prefix_mass`` per block and head, the mean over
images and patch queries of ``Σ_{j prefix} a_ij``, the share of attention on the class/prefix tokens before
the renormalisation. A head with 0.999 of it on the class token has a renormalised distance computed from the
last 0.001 (a random ViT's reads as near-uniform, about 115 px on 224 px images): its distance says where the
little attention left for patches goes, not where the head looks. Heads above :data:`MOSTLY_PREFIX` are listed
in the summary.

timm's ``Attention`` computes fused scaled-dot-product attention by default, which never forms the weights:
for this pass ``fused_attn`` is switched off (the same arithmetic, written out) and the weights are read at the
input of ``attn_drop`` (an identity in eval mode); the switch is put back afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vvm.analyses.common import (
    TokenGrid,
    analysis_mode,
    device_of,
    first_images,
    progress,
    split_model,
    token_grid,
)
from vvm.analyses.registry import Analysis, NotApplicable, SweepPanels, register_analysis
from vvm.cka.params import option
from vvm.cka.presets import LayerSpec

# a head whose patch queries put more than this share of their attention on the class/prefix tokens is listed
MOSTLY_PREFIX = 0.5


@dataclass
class AttentionResult:
    """``distance`` ``[blocks, heads]`` in input pixels for the attention modules ``blocks`` (in order);
    ``prefix_mass`` ``[blocks, heads]``: the patch queries' mean attention on the class/prefix tokens."""

    blocks: list[str]
    distance: np.ndarray
    prefix_mass: np.ndarray
    n_images: int
    image_size: tuple[int, int]
    grid: tuple[int, int]
    patch: tuple[int, int]
    prefix_tokens: int
    renormalised: bool

    @property
    def depth(self) -> np.ndarray:
        """Relative depth of each block: ``(b + 1) / blocks``."""
        return (np.arange(len(self.blocks)) + 1) / len(self.blocks)

    def arrays(self) -> dict[str, np.ndarray]:
        """What attention.npz holds."""
        return {
            "blocks": np.array(self.blocks, dtype=str),
            "distance": self.distance,
            "distance_frac": self.distance / max(self.image_size),
            "depth": self.depth,
            "n_images": np.array(self.n_images),
            "image_size": np.array(self.image_size),
            "grid": np.array(self.grid),
            "patch": np.array(self.patch),
            "prefix_tokens": np.array(self.prefix_tokens),
            "renormalised": np.array(self.renormalised),
            "excluded": np.array("class/prefix tokens left out as queries and keys"),
            "prefix_mass": self.prefix_mass,
        }

    def mostly_prefix(self) -> list[str]:
        """``block/head`` of the heads whose patch queries put more than :data:`MOSTLY_PREFIX` of their attention
        on the class/prefix tokens."""
        rows, cols = np.nonzero(np.nan_to_num(self.prefix_mass) > MOSTLY_PREFIX)
        return [f"{self.blocks[b]}/{h}" for b, h in zip(rows.tolist(), cols.tolist())]

    def summary(self) -> dict[str, Any]:
        d = self.distance
        return {
            "applies": True,
            "n_images": self.n_images,
            "blocks": self.blocks,
            "mean_distance_px": [round(float(v), 3) for v in d.mean(axis=1)],
            "min_head_px": [round(float(v), 3) for v in d.min(axis=1)],
            "max_head_px": [round(float(v), 3) for v in d.max(axis=1)],
            "image_size": list(self.image_size),
            "prefix_tokens_excluded": self.prefix_tokens,
            "renormalised": self.renormalised,
            "prefix_mass_mean": [round(float(v), 4) for v in np.nanmean(self.prefix_mass, axis=1)],
            "prefix_mass_max_head": [round(float(v), 4) for v in np.nanmax(self.prefix_mass, axis=1)],
            "heads_mostly_on_prefix": self.mostly_prefix(),
            "prefix_mass_note": (
                f"prefix_mass: the share of the patch queries' attention on the {self.prefix_tokens} "
                "class/prefix token(s), before renormalising; a head above "
                f"{MOSTLY_PREFIX} (heads_mostly_on_prefix) has a distance computed from the rest only"
            ),
        }


def patch_distances(tokens: TokenGrid) -> np.ndarray:
    """``[P, P]`` Euclidean distances between patch centres, in input pixels."""
    c = tokens.centres()
    return np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])


def distance_from_weights(attn: Tensor, dist: Tensor, prefix: int, renormalise: bool = True) -> Tensor:
    """Per image and head, ``mean_i Σ_j a_ij ‖p_i − p_j‖`` over patch queries and keys: ``attn``
    ``[B, heads, T, T]`` softmax weights, ``dist`` ``[P, P]`` with ``T = prefix + P``; returns ``[B, heads]``."""
    a = attn[:, :, prefix:, prefix:].to(dist.dtype)
    if renormalise:
        a = a / a.sum(dim=-1, keepdim=True)
    return (a * dist).sum(dim=-1).mean(dim=-1)


def prefix_mass_from_weights(attn: Tensor, prefix: int) -> Tensor:
    """Per image and head, ``mean_i Σ_{j < prefix} a_ij`` over the patch queries ``i``: the attention on the
    class/prefix tokens before any renormalisation; ``attn`` ``[B, heads, T, T]``; returns ``[B, heads]``."""
    return attn[:, :, prefix:, :prefix].double().sum(dim=-1).mean(dim=-1)


def attention_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's ``Attention`` modules (by what they hold: ``qkv``, ``num_heads``, ``attn_drop``, ``fused_attn``)."""
    return [
        (name, m)
        for name, m in net.named_modules()
        if all(hasattr(m, a) for a in ("qkv", "num_heads", "fused_attn"))
        and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def not_applicable(model: nn.Module) -> NotApplicable | None:
    """Why mean attention distance does not apply to ``model`` (None when it does)."""
    _, net = split_model(model)
    name = getattr(model, "name", type(net).__name__)
    if any(type(m).__name__ == "LambdaLayer" for m in net.modules()):
        return NotApplicable(
            "attention",
            f"does not apply to {name}: lambda layers form no attention map (each summarises its context into a "
            "linear function applied to every query), see README 'What each layer sees and knows'",
        )
    if token_grid(net) is None or not attention_modules(net):
        return NotApplicable(
            "attention", f"does not apply to {name}: it has no softmax attention over patch tokens (a CNN)"
        )
    return None


def mean_attention_distance(
    model: nn.Module, images: Tensor, *, batch_size: int = 32, renormalise: bool = True
) -> AttentionResult | NotApplicable:
    """Mean attention distance per block and head of a timm ViT over ``images`` (dataset-normalised
    ``[N, 3, h, w]``); a :class:`NotApplicable` note for a model without attention over patches."""
    why = not_applicable(model)
    if why is not None:
        return why
    preprocess, net = split_model(model)
    tokens = token_grid(net)
    assert tokens is not None
    mods = attention_modules(net)
    device = device_of(net)
    dist = torch.as_tensor(patch_distances(tokens), dtype=torch.float64, device=device)
    sums: dict[str, Tensor] = {}
    mass: dict[str, Tensor] = {}
    fused = {m: m.fused_attn for _, m in mods}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            attn = args[0]
            if attn.dim() != 4 or attn.shape[-1] != tokens.prefix + tokens.n_patches:
                raise RuntimeError(
                    f"attention {name!r}: weights of shape {tuple(attn.shape)}, expected [B, heads, T, T] with "
                    f"T = {tokens.prefix} prefix + {tokens.n_patches} patch tokens"
                )
            d = distance_from_weights(attn, dist, tokens.prefix, renormalise).sum(dim=0)
            sums[name] = sums.get(name, 0) + d
            mass[name] = mass.get(name, 0) + prefix_mass_from_weights(attn, tokens.prefix).sum(dim=0)

        return hook

    handles = [m.attn_drop.register_forward_hook(hook_for(name)) for name, m in mods]
    try:
        for m in fused:
            m.fused_attn = False
        with torch.no_grad(), analysis_mode(model):
            for chunk in progress(images.split(max(1, int(batch_size))), "attention distances"):
                net(preprocess(chunk.to(device, torch.float32)))
    finally:
        for h in handles:
            h.remove()
        for m, f in fused.items():
            m.fused_attn = f
    return _result(mods, sums, mass, images.shape[0], tokens, renormalise)


def _per_head(mods: list, sums: dict, n: int) -> np.ndarray:
    """``[blocks, heads]`` of the per-block sums over images divided by ``n`` (NaN where a block has fewer heads)."""
    heads = max(int(sums[name].numel()) for name, _ in mods)
    out = np.full((len(mods), heads), np.nan)
    for b, (name, _) in enumerate(mods):
        v = (sums[name] / n).cpu().numpy()
        out[b, : v.size] = v
    return out


def _result(
    mods: list, sums: dict, mass: dict, n: int, tokens: TokenGrid, renormalise: bool
) -> AttentionResult:
    silent = [name for name, _ in mods if name not in sums]
    if silent:
        raise RuntimeError(
            f"attention modules {silent[:4]} did not pass their weights through attn_drop: their attention "
            "cannot be read (a timm attention class vvm does not know)"
        )
    size = (tokens.grid[0] * tokens.patch[0], tokens.grid[1] * tokens.patch[1])
    return AttentionResult(
        blocks=[name for name, _ in mods],
        distance=_per_head(mods, sums, n),
        prefix_mass=_per_head(mods, mass, n),
        n_images=n,
        image_size=size,
        grid=tokens.grid,
        patch=tokens.patch,
        prefix_tokens=tokens.prefix,
        renormalised=renormalise,
    )


@dataclass(frozen=True)
class AttentionParams:
    """``analysis.attention.*``: ``n_images``: images averaged (the first of the CKA pass's order);
    ``batch_size``: images per forward pass; ``renormalise``: renormalise each query's weights over the patch
    keys (see the module docstring)."""

    n_images: int = option(64, minimum=1, why="images averaged")
    batch_size: int = option(32, minimum=1, why="images per forward pass")
    renormalise: bool = option(True, why="renormalise each query's weights over the patch keys")


@register_analysis
class Attention(Analysis):
    """Mean attention distance per block and head of a timm ViT (a note for any other model)."""

    name = "attention"
    title = "mean attention distance"
    Params = AttentionParams
    sweep = SweepPanels(
        panels=(("distance", "mean attention distance (pixels)"),), top=None, last="last attention block"
    )

    def run(
        self, model: nn.Module, layers: LayerSpec, dm: Any, params: AttentionParams, seed: int
    ) -> AttentionResult | NotApplicable:
        why = not_applicable(model)  # before reading any image
        if why is not None:
            return why
        images = first_images(dm.cka_batches(), params.n_images)
        return mean_attention_distance(
            model, images, batch_size=params.batch_size, renormalise=params.renormalise
        )

    def figure(self, arrays: Any, title: str | None = None) -> Any:
        from vvm.plots.analyses import attention_figure

        return attention_figure(arrays, title=title)

    def scalars(self, entry: Any) -> dict[str, float]:
        """The distance averaged over blocks and heads, in pixels."""
        d = entry.get("mean_distance_px")
        return {"mean_distance_px": float(sum(d) / len(d))} if d else {}

    def reference(self, record: Any) -> tuple[float, str] | None:
        """Uniform attention over the record's patch grid."""
        from vvm.plots.analyses import uniform_distance

        if "grid" in record and "patch" in record:
            return round(uniform_distance(record["grid"], record["patch"]), 6), "uniform attention"
        return None
