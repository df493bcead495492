"""What the per-layer analyses share: where a layer's output lies on the image, pooled features, the images of
the CKA pass's order, hooks that keep only what an analysis needs, and a model held in analysis mode.

Layouts of a layer's output (``[N, ...]``, batch first):

- ``[N, C, H, W]``: a feature map (CNNs, Lambda-ResNets, a ViT's ``patch_embed`` in NHWC form is recognised by
  its patch grid);
- ``[N, T, D]`` on a timm ViT: tokens; the first ``num_prefix_tokens`` (class and register tokens) are not on
  the image, the other ``T - prefix`` lie on ``patch_embed.grid_size`` in row-major order;
- anything else (``[N, D]`` after pooling, logits) has no spatial layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from vvm.cka.functional import representation
from vvm.models.base import VisionModel


@dataclass(frozen=True)
class TokenGrid:
    """Where a ViT's tokens lie: ``prefix`` tokens off the image, then a ``grid`` of patches of ``patch``
    pixels (rows, columns) of the network's input."""

    prefix: int
    grid: tuple[int, int]
    patch: tuple[int, int]

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def centres(self) -> np.ndarray:
        """``[P, 2]`` patch centres (row, column) in input pixels, patches in row-major order."""
        rows = (np.arange(self.grid[0]) + 0.5) * self.patch[0]
        cols = (np.arange(self.grid[1]) + 0.5) * self.patch[1]
        r, c = np.meshgrid(rows, cols, indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def token_grid(net: nn.Module) -> TokenGrid | None:
    """The token layout of a timm ViT-like network (``patch_embed.grid_size`` and ``patch_size``,
    ``num_prefix_tokens``), or None for a network without patch tokens."""
    pe = getattr(net, "patch_embed", None)
    grid, patch = getattr(pe, "grid_size", None), getattr(pe, "patch_size", None)
    if grid is None or patch is None:
        return None
    return TokenGrid(int(getattr(net, "num_prefix_tokens", 0) or 0), _pair(grid), _pair(patch))


def spatial_map(out: Tensor, tokens: TokenGrid | None) -> Tensor | None:
    """``out`` as a ``[N, C, H, W]`` map over the image (a view where possible), or None when it has no
    spatial layout. ViT tokens: the prefix tokens are dropped, the patch tokens laid on their grid."""
    if out.dim() == 4:
        if tokens is not None and tuple(out.shape[1:3]) == tokens.grid and out.shape[3] != tokens.grid[1]:
            return out.permute(0, 3, 1, 2)  # a patch embedding in NHWC form
        return out
    if out.dim() == 3 and tokens is not None:
        n, t, d = out.shape
        if t == tokens.prefix + tokens.n_patches:
            out = out[:, tokens.prefix :]
        elif t != tokens.n_patches:
            return None
        return out.reshape(n, *tokens.grid, d).permute(0, 3, 1, 2)
    return None


def pooled(out: Tensor, tokens: TokenGrid | None) -> Tensor:
    """``[N, d]`` features: a map averaged over space, tokens over the patch tokens (prefix tokens left out),
    a flat output as it is."""
    sp = spatial_map(out, tokens)
    if sp is not None:
        return sp.mean(dim=(2, 3))
    if out.dim() == 3:
        drop = tokens.prefix if tokens is not None and out.shape[1] > tokens.prefix else 0
        return out[:, drop:].mean(dim=1)
    return out.reshape(out.shape[0], -1)


def split_model(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Module]:
    """``(preprocess, net)``: a :class:`VisionModel`'s own preprocessing (resolution, normalisation) and its
    network, whose input is the image the analyses measure in; any other module is its own network."""
    if isinstance(model, VisionModel):
        return model.preprocess, model.net
    return (lambda x: x), model


def device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm's running statistics, no dropout: every example independent of the others), no
    parameter gradients, autocast off; every module's mode and every parameter's flag restored on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    device = device_of(model).type
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        with torch.autocast(device_type=device, enabled=False):
            yield
    finally:
        for m, training in modes.items():
            m.train(training)
        for p, flag in flags.items():
            p.requires_grad_(flag)


class Capture:
    """Forward hooks on ``names`` of ``net`` that keep ``fn(name, output)`` per call, never the output itself
    (an in-place op later in the network cannot change what was kept). A module that runs k times per pass
    gives ``name#0`` .. ``name#k-1``."""

    def __init__(self, net: nn.Module, names: Sequence[str], fn: Callable[[str, Tensor], Any]) -> None:
        modules = dict(net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"layers {missing[:5]} are not modules of {type(net).__name__}")
        self.names = list(names)
        self.fn = fn
        self.kept: dict[str, list[Any]] = {n: [] for n in self.names}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            t = representation(output)
            if t is None:
                raise TypeError(f"layer {name!r} returned {type(output).__name__} with no batch-first tensor")
            self.kept[name].append(self.fn(name, t))

        return hook

    def take(self) -> dict[str, Any]:
        """What this pass kept, by layer (``name#i`` for repeated modules), and start afresh."""
        out: dict[str, Any] = {}
        for name in self.names:
            calls = self.kept[name]
            if not calls:
                raise RuntimeError(f"layer {name!r} did not run in the forward pass: drop it from the layers")
            out.update(
                {f"{name}#{i}": v for i, v in enumerate(calls)} if len(calls) > 1 else {name: calls[0]}
            )
        self.kept = {n: [] for n in self.names}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan_loader(dataset: Dataset, plan: list[list[int]], num_workers: int = 0) -> DataLoader:
    """Batches of ``dataset`` in the order of ``plan`` (lists of indices), all of them on this process."""
    return DataLoader(dataset, batch_sampler=plan, num_workers=num_workers)


def first_images(batches: Iterable[Any], n: int) -> Tensor:
    """The first ``n`` images of a batch plan, in its order: for the datamodule's ``cka_batches()`` (an
    ``EvalBatches``) the first ``n`` examples of the CKA pass's seeded permutation, whatever this process's
    rank; for any other iterable of ``(images, labels)`` batches, its first ``n`` images."""
    if n < 1:
        raise ValueError(f"n_images={n}: use a positive number of images")
    plan = getattr(batches, "plan", None)
    dataset = getattr(batches, "dataset", None)
    if plan is not None and dataset is not None:
        idx = [i for b in plan for i in b][:n]
        if not idx:
            raise ValueError("the batch plan holds no examples")
        return default_collate([dataset[i] for i in idx])[0]
    out, have = [], 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(x[: n - have])
        have += out[-1].shape[0]
        if have >= n:
            break
    if not out:
        raise ValueError("the batches hold no images")
    return torch.cat(out)


def relative_depth(tracked: Sequence[str], layers: Sequence[str]) -> np.ndarray:
    """Each of ``layers``' relative depth among the ``tracked`` layers: ``(i + 1) / len(tracked)`` for the
    i-th tracked layer, so 0 is the input and 1 the last tracked layer (``name#k`` counts as ``name``'s place
    when only ``name`` is tracked)."""
    index = {n: i for i, n in enumerate(tracked)}
    total = len(tracked)
    out = []
    for name in layers:
        i = index.get(name, index.get(name.rsplit("#", 1)[0]))
        if i is None:
            raise ValueError(f"layer {name!r} is not among the tracked layers")
        out.append((i + 1) / total)
    return np.asarray(out, dtype=np.float64)


def progress(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """``items`` with a tqdm progress bar on stderr, as the CKA pass (Lightning's) and the joint pass have one;
    removed when the loop ends. ``TQDM_DISABLE=1`` turns every such bar off."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
