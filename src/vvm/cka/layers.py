"""Which modules to record: exact names, glob patterns, or a model's named presets."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from torch import nn

PRESETS = ("blocks", "all", "seed")
LayerSpec = str | Sequence[str]


def layer_presets(model: nn.Module) -> dict[str, list[str]]:
    """The presets ``blocks``, ``all`` and ``seed`` of ``model``.

    vvm's own networks define ``layer_presets()``; anything else (timm, torchvision, your own module) gets the
    structural rules of :func:`vvm.models.presets.generic_presets`.
    """
    own = getattr(model, "layer_presets", None)
    if callable(own):
        return own()
    from vvm.models.presets import generic_presets

    return generic_presets(model)


def _is_pattern(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def resolve_layers(model: nn.Module, spec: LayerSpec) -> list[str]:
    """Expand a layer spec into module names of ``model``, in order, without duplicates.

    ``spec`` is one item or a list of items; an item is a preset name (``blocks``, ``all``, ``seed``), a glob
    pattern over module names (``layer1.*``), or an exact module name. A preset name wins over a module of the
    same name. Anything that matches nothing is an error that lists the closest real names.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError("no layers given: name modules, glob patterns or a preset (blocks, all, seed)")
    names = [name for name, _ in model.named_modules() if name]
    known = set(names)
    out: list[str] = []
    for item in items:
        if item in PRESETS:
            found = layer_presets(model)[item]
            missing = [n for n in found if n not in known]
            if missing:
                raise ValueError(f"preset {item!r} names modules that the model lacks: {missing[:5]}")
        elif _is_pattern(item):
            found = fnmatch.filter(names, item)
        else:
            found = [item] if item in known else []
        if not found:
            close = difflib.get_close_matches(item, names, n=6, cutoff=0.5) or names[:6]
            raise ValueError(
                f"layer {item!r} matches no module of {type(model).__name__}; closest names: "
                f"{', '.join(close)} (or use a preset: {', '.join(PRESETS)})"
            )
        out.extend(found)
    return list(dict.fromkeys(out))
