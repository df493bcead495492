"""Model registry: ``create(name, ...)`` builds a :class:`VisionModel` (network + preprocessing).

Hydra model configs point at :func:`create` with ``_target_``; each family registers a builder with
:func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vvm.models.base import VisionModel

# CIFAR-100 statistics, the seed's normalisation; CIFAR models expect inputs normalised like their data
Builder = Callable[..., VisionModel]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int = 100, seed: int | None = 0, **kwargs) -> VisionModel:
    """Build model ``name`` with freshly initialised weights; the same ``seed`` gives the same weights."""
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r} is not known: choose one of {', '.join(available())}")
    if seed is None:
        return _REGISTRY[name](num_classes=num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _REGISTRY[name](num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cifar(name: str, fn: Callable[[int], nn.Module]) -> None:
    @register(name)
    def build(num_classes: int = 100) -> VisionModel:
        return VisionModel(fn(num_classes), name=name, family="resnet")


def _register_builtin() -> None:
    from functools import partial

    from vvm.models import lambda_resnet, resnet_cifar, timm_models

    _cifar("r18", resnet_cifar.resnet18)
    _cifar("r34", resnet_cifar.resnet34)
    _cifar("r50", resnet_cifar.resnet50)
    # Lambda-ResNets (Bello 2021): CIFAR bottleneck ResNets with lambda layers instead of 3x3 convs
    for name in lambda_resnet.BLOCK_COUNTS:
        register(name)(partial(lambda_resnet.build, name))
    # timm: ViT-L/32 at 224x224, and any timm model by name (create("timm", arch="convnext_tiny"))
    register("vit_l32")(timm_models.build_vit_l32)
    register("timm")(timm_models.build_timm)


_register_builtin()

__all__ = ["VisionModel", "available", "count_parameters", "create", "register"]
