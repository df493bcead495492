"""Model registry: ``create(name, ...)`` builds a :class:`VisionModel` (network + preprocessing).

Hydra model configs point at :func:`create` with ``_target_``; each family registers a builder with
:func:`register`. The registry is the one place that says, for each model: its family, whether vvm trains it
for ``init=pretrained`` (the CIFAR models, which have no published weights) and, by the order of registration,
where it stands in tables and figures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vvm.models.base import VisionModel

Builder = Callable[..., VisionModel]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``builder(num_classes=..., **kwargs)`` builds it; every model it builds has
    ``family``; ``trained_here``: vvm trains it for ``init=pretrained``; ``named_by_arch``: its models are named
    by the architecture they are given (``timm``), not by the entry."""

    name: str
    builder: Builder
    family: str
    trained_here: bool = False
    named_by_arch: bool = False


_REGISTRY: dict[str, ModelEntry] = {}  # in display order
# families of models the registry does not name (any timm model): from the name
_NAME_FAMILIES = (("resnet", re.compile(r"(r|resnet)\d+[a-z0-9_]*")), ("vit", re.compile(r"(vit|deit).*")))


def register(
    name: str, *, family: str | None = None, trained_here: bool = False, named_by_arch: bool = False
) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = ModelEntry(name, fn, family or name, trained_here, named_by_arch)
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def display_order() -> tuple[str, ...]:
    """Model names in the order tables and figures show them (the order of registration)."""
    return tuple(_REGISTRY)


def families() -> tuple[str, ...]:
    """The registered families, in display order."""
    return tuple(dict.fromkeys(e.family for e in _REGISTRY.values()))


def family_of(name: str | None) -> str:
    """The family of the model called ``name``: the registry's, else guessed from the name for a model it does
    not name (``resnet101``, ``deit_small``: any timm model), else ``other``."""
    n = (name or "").lower()
    entry = _REGISTRY.get(n)
    if entry is not None and not entry.named_by_arch:
        return entry.family
    for family, pattern in _NAME_FAMILIES:
        if pattern.fullmatch(n):
            return family
    return "other"


def trained_by_vvm(name_or_model: str | VisionModel) -> bool:
    """True for the models that exist only as CIFAR networks (r18 r34 r50 lambda_r26 lambda_r38 lambda_r50):
    their ``pretrained`` weights are weights vvm trains on the chosen dataset, not published ones."""
    name = name_or_model.name if isinstance(name_or_model, VisionModel) else str(name_or_model)
    entry = _REGISTRY.get(name)
    return entry is not None and entry.trained_here


def create(name: str, *, num_classes: int = 100, seed: int | None = 0, **kwargs) -> VisionModel:
    """Build model ``name`` with freshly initialised weights; the same ``seed`` gives the same weights."""
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r} is not known: choose one of {', '.join(available())}")
    entry = _REGISTRY[name]
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = entry.builder(num_classes=num_classes, **kwargs)
    model.family = entry.family
    return model


def create_timm(
    name: str,
    *,
    num_classes: int = 100,
    seed: int | None = 0,
    input_size: int | None = None,
    timm_kwargs: Mapping[str, Any] | None = None,
) -> VisionModel:
    """``conf/model/timm.yaml``'s target: the timm model ``name`` (``model.name`` is the timm name itself),
    through the seeded :func:`create` (``create("timm", arch=name, ...)``)."""
    return create(
        "timm", arch=name, num_classes=num_classes, seed=seed, input_size=input_size, timm_kwargs=timm_kwargs
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cifar(name: str, fn: Callable[[int], nn.Module]) -> None:
    @register(name, family="resnet", trained_here=True)
    def build(num_classes: int = 100) -> VisionModel:
        return VisionModel(fn(num_classes), name=name)


def _register_builtin() -> None:
    from functools import partial

    from vvm.models import lambda_resnet, resnet_cifar, timm_models

    _cifar("r18", resnet_cifar.resnet18)
    _cifar("r34", resnet_cifar.resnet34)
    _cifar("r50", resnet_cifar.resnet50)
    # Lambda-ResNets (Bello 2021): CIFAR bottleneck ResNets with lambda layers instead of 3x3 convs
    for name in lambda_resnet.BLOCK_COUNTS:
        register(name, family="lambda_resnet", trained_here=True)(partial(lambda_resnet.build, name))
    # timm: ViT-L/32 at 224x224, and any timm model by name (create("timm", arch="convnext_tiny"))
    register("vit_l32", family="vit")(timm_models.build_vit_l32)
    register("timm", family="timm", named_by_arch=True)(timm_models.build_timm)


_register_builtin()

__all__ = [
    "ModelEntry",
    "VisionModel",
    "available",
    "count_parameters",
    "create",
    "create_timm",
    "display_order",
    "families",
    "family_of",
    "register",
    "trained_by_vvm",
]
