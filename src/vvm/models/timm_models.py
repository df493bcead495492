"""timm networks behind :class:`VisionModel`: ``vit_l32`` (ViT-L/32 at 224x224, Dosovitskiy et al. 2021) and
``timm`` (any timm model by name).

Each network keeps its own input resolution and normalisation: ``input_size`` and ``mean``/``std`` come from
the timm pretrained config of the model (for a ViT its ``patch_embed.img_size``), so 32x32 CIFAR images are
resized on the device to 224x224 and re-normalised. Construction never downloads anything: weights are random
(seeded by :func:`vvm.models.create`) until :func:`vvm.pipeline.weights.load_or_train` loads the published ones.

Config: ``model=vit_l32``, or ``model=timm model.name=convnext_tiny`` (``model.name`` is any name of
``timm.list_models()``, with or without a pretrained tag such as ``convnext_tiny.fb_in22k``; the tag picks the
weights ``init=pretrained`` loads and their normalisation). In Python: ``create("timm", arch="convnext_tiny")``
or :func:`vvm.models.from_settings`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from vvm.models.base import VisionModel

# the term project's ViT-L/32: ImageNet-21k weights (Google's original release, no classifier head)
VIT_L32 = "vit_large_patch32_224.orig_in21k"
# model=timm's default architecture
DEFAULT_ARCH = "convnext_tiny"
VIT_L32_ABOUT = (
    "ViT-L/32 at 224x224 (timm vit_large_patch32_224, ImageNet-21k config: mean = std = 0.5), 305.6M parameters "
    "with 100 classes; dataset images are resized to 224x224 and re-normalised on the device. init=pretrained "
    f"loads timm's {VIT_L32} weights (hub, or init.weights_file offline); input_size: null is 224"
)
TIMM_ABOUT = (
    "Any timm model by name: model=timm model.name=convnext_tiny (a timm.list_models() name, optionally with a "
    "pretrained tag, e.g. convnext_tiny.fb_in22k). Its resolution and normalisation come from timm's pretrained "
    "config, so dataset images are resized and re-normalised on the device; timm_kwargs go to "
    "timm.create_model (e.g. {drop_path_rate: 0.0})"
)


def published_arch(entry: str, name: str) -> str | None:
    """The timm architecture (with its pretrained tag) whose published weights ``init=pretrained`` loads for
    registry entry ``entry`` configured with ``model.name=name``, or None when timm publishes none."""
    import timm.models

    arch = VIT_L32 if entry == "vit_l32" else name if entry == "timm" else None
    if arch is None or timm.models.get_pretrained_cfg(arch) is None:
        return None
    return arch


def timm_net(arch: str, *, num_classes: int, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=...)`` with a helpful error for unknown names."""
    import timm

    base = arch.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=6, cutoff=0.6)
        raise ValueError(
            f"timm has no model {arch!r}; closest names: {', '.join(close) or 'none'} "
            "(see timm.list_models('*pattern*'))"
        )
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **timm_kwargs)


def model_input_size(net: nn.Module) -> int:
    """The square input resolution ``net`` expects: a ViT's ``patch_embed.img_size``, else timm's
    ``pretrained_cfg["input_size"]``."""
    img_size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    else:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    if size[0] != size[1]:
        raise ValueError(f"{type(net).__name__} expects {size[0]}x{size[1]} inputs: set model.input_size")
    return int(size[0])


def wrap_timm(net: nn.Module, *, name: str, input_size: int | None = None) -> VisionModel:
    """Put a timm network behind :class:`VisionModel` with the network's own resolution and normalisation."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return VisionModel(
        net,
        name=name,
        input_size=int(input_size) if input_size is not None else model_input_size(net),
        mean=cfg.get("mean"),
        std=cfg.get("std"),
    )


def build_vit_l32(num_classes: int = 100, input_size: int | None = None) -> VisionModel:
    """ViT-L/32 (24 blocks, width 1024, 16 heads, 32x32 patches) at 224x224, timm's ``vit_large_patch32_224``
    with the ImageNet-21k pretrained config (mean = std = 0.5); about 305.6M parameters with 100 classes.

    ``input_size`` other than 224 builds the ViT for that resolution (its position embedding grid changes;
    published weights are resampled to it when loaded)."""
    kwargs = {"img_size": int(input_size)} if input_size is not None else {}
    net = timm_net(VIT_L32, num_classes=num_classes, **kwargs)
    return wrap_timm(net, name="vit_l32")


def build_timm(
    num_classes: int = 100,
    *,
    arch: str = DEFAULT_ARCH,
    input_size: int | None = None,
    timm_kwargs: Mapping[str, Any] | None = None,
) -> VisionModel:
    """Any timm model: ``arch`` is its timm name (optionally with a pretrained tag); ``timm_kwargs`` go to
    ``timm.create_model`` (``img_size``, ``drop_path_rate``...). The VisionModel's name is ``arch``.

    ``input_size`` only changes the resolution images are resized to; a ViT-like model with a fixed grid takes
    its resolution from ``timm_kwargs={"img_size": ...}`` instead."""
    net = timm_net(arch, num_classes=num_classes, **dict(timm_kwargs or {}))
    return wrap_timm(net, name=arch, input_size=input_size)
