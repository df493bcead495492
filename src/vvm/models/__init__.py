"""Model registry: ``create(name, ...)`` builds a :class:`VisionModel` (network + preprocessing).

Each family registers a builder with :func:`register`; the settings of ``model=<name>`` and ``compare=<name>``
are generated from the builder's signature (:func:`settings_classes`) and built by :func:`from_settings`. The registry is the one place that
says, for each model: its family, whether vvm trains it for ``init=pretrained`` (the CIFAR models, which have no
published weights), what it is (its description) and, by the order of registration, where it stands in tables and
figures.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from vvm.models.base import VisionModel
from vvm.settings import ModelSettings
from vvm.settings.generate import signature_settings

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
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}  # in display order
# families of models the registry does not name (any timm model): from the name
_NAME_FAMILIES = (("resnet", re.compile(r"(r|resnet)\d+[a-z0-9_]*")), ("vit", re.compile(r"(vit|deit).*")))


def register(
    name: str,
    *,
    family: str | None = None,
    trained_here: bool = False,
    named_by_arch: bool = False,
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes=..., **options)`` as model ``name``: that is all ``model=<name>`` and
    ``compare=<name>`` need (their settings are generated from the builder's signature, see
    :func:`settings_classes`). ``description`` is what ``model=<name>`` is, for the docs and the config."""

    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = ModelEntry(name, fn, family or name, trained_here, named_by_arch, description)
        return fn

    return deco


def registry() -> dict[str, ModelEntry]:
    """The registered models, in display order."""
    return dict(_REGISTRY)


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


def trained_by_vvm(model: str | VisionModel | ModelSettings) -> bool:
    """True for the models that exist only as CIFAR networks (r18 r34 r50 lambda_r26 lambda_r38 lambda_r50):
    their ``pretrained`` weights are weights vvm trains on the chosen dataset, not published ones."""
    if isinstance(model, ModelSettings):
        name = type(model).entry or model.name
    else:
        name = model.name if isinstance(model, VisionModel) else str(model)
    entry = _REGISTRY.get(name)
    return entry is not None and entry.trained_here and not entry.named_by_arch


def published_arch(settings: ModelSettings) -> str | None:
    """The timm architecture whose published weights ``init=pretrained`` loads for these settings (vit_l32's
    ImageNet-21k ViT-L/32, a timm model's own), or None for models without published weights."""
    from vvm.models.timm_models import published_arch as timm_published

    return timm_published(type(settings).entry or settings.name, settings.name)


def from_settings(settings: ModelSettings) -> VisionModel:
    """The model ``settings`` (``model.*`` or ``compare.*``) describe, seeded; see :func:`create`."""
    entry = _REGISTRY[type(settings).entry or settings.name]
    options = settings.options()
    if entry.named_by_arch:
        options["arch"] = settings.name
    return create(entry.name, num_classes=int(settings.num_classes), seed=int(settings.seed), **options)


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


# the builder arguments the job fills in itself
_JOB_ARGS = ("num_classes", "arch")


@functools.cache
def settings_class(entry: ModelEntry) -> type[ModelSettings]:
    """The settings of ``model=<entry.name>``: ``name``, ``num_classes`` (default: the dataset's), ``seed``
    (default: the job's), then the builder's own options with their types and defaults."""
    import inspect

    name = entry.name
    if entry.named_by_arch:
        name = inspect.signature(entry.builder).parameters["arch"].default
    seed_rule = next(f.metadata for f in fields(ModelSettings) if f.name == "seed")  # its range, kept
    cls = signature_settings(
        entry.name,
        entry.builder,
        base=ModelSettings,
        first=[
            ("name", str, field(default=name)),
            ("num_classes", int, field(default="${dataset.num_classes}")),
            ("seed", int, field(default="${seed}", metadata=seed_rule)),
        ],
        skip=_JOB_ARGS,
        module=__name__,
        doc=entry.description,
    )
    cls.entry = entry.name
    return cls


def settings_classes() -> dict[str, type[ModelSettings]]:
    """``{registered name: settings class}`` in display order: what ``model=<name>`` and ``compare=<name>`` are
    composed against."""
    return {name: settings_class(entry) for name, entry in _REGISTRY.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cifar(name: str, fn: Callable[[int], nn.Module], description: str) -> None:
    @register(name, family="resnet", trained_here=True, description=description)
    def build(num_classes: int = 100) -> VisionModel:
        return VisionModel(fn(num_classes), name=name)


PLAIN_ABOUT = (
    "a plain CNN: depth 3x3 conv-BN-ReLU layers (widths width, 2 width, 4 width), global pool, linear head"
)


def build_plain(num_classes: int = 100, depth: int = 10, width: int = 32) -> VisionModel:
    """``model=plain``: :class:`vvm.models.plain.PlainCNN` (``model.depth``, ``model.width``)."""
    from vvm.models.plain import PlainCNN

    return VisionModel(PlainCNN(depth, width, num_classes), name="plain")


def _register_builtin() -> None:
    from functools import partial

    from vvm.models import lambda_resnet, resnet_cifar, timm_models

    stem = "3x3 stride-1 stem, no max-pool"
    _cifar("r18", resnet_cifar.resnet18, f"CIFAR ResNet-18 ({stem}), 11.2M parameters with 100 classes")
    _cifar("r34", resnet_cifar.resnet34, f"CIFAR ResNet-34 ({stem}), 21.3M parameters with 100 classes")
    _cifar(
        "r50", resnet_cifar.resnet50, f"CIFAR ResNet-50 (bottlenecks, {stem}), 23.7M parameters, 100 classes"
    )
    _cifar(
        "r101",
        resnet_cifar.resnet101,
        f"CIFAR ResNet-101 ([3, 4, 23, 3] bottlenecks, {stem}), 42.7M parameters",
    )
    # Lambda-ResNets (Bello 2021): CIFAR bottleneck ResNets with lambda layers instead of 3x3 convs
    for name, about in lambda_resnet.DESCRIPTIONS.items():
        build = partial(lambda_resnet.build, name)
        register(name, family="lambda_resnet", trained_here=True, description=about)(build)
    # a plain CNN of depth conv-BN-ReLU layers (Kornblith et al. 2019's Table 2 family)
    register("plain", family="plain", trained_here=True, description=PLAIN_ABOUT)(build_plain)
    # timm: ViT-L/32 at 224x224, and any timm model by name (create("timm", arch="convnext_tiny"))
    register("vit_l32", family="vit", description=timm_models.VIT_L32_ABOUT)(timm_models.build_vit_l32)
    register("timm", family="timm", named_by_arch=True, description=timm_models.TIMM_ABOUT)(
        timm_models.build_timm
    )


_register_builtin()


def __getattr__(name: str) -> type[ModelSettings]:
    """A generated settings class by its name (``R18Settings``): a pickled config (submitit's launchers, a
    process of a sweep) names its class by module and name, and a class exists once it is generated."""
    found = {cls.__name__: cls for cls in settings_classes().values()}
    if name in found:
        return found[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ModelEntry",
    "VisionModel",
    "available",
    "count_parameters",
    "create",
    "from_settings",
    "published_arch",
    "registry",
    "settings_class",
    "settings_classes",
    "display_order",
    "families",
    "family_of",
    "register",
    "trained_by_vvm",
]
