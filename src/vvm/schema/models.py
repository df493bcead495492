"""The settings class of every registered model, generated from its builder's signature (as hydra-zen's
``builds(..., populate_full_signature=True)`` would): ``name``, ``num_classes`` (default: the dataset's),
``seed`` (default: the job's) and the builder's own options with their types and defaults. Registering a model
in :mod:`vvm.models` is all it takes to get ``model=<name>`` and ``compare=<name>``.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import field, fields, make_dataclass
from typing import Any

from vvm.models import ModelEntry, registry
from vvm.settings import ModelSettings

# the builder arguments the job fills in itself
_JOB_ARGS = ("num_classes", "arch")
_SEED_RULE = next(f.metadata for f in fields(ModelSettings) if f.name == "seed")  # its range, kept


def omegaconf_type(annotation: Any) -> Any:
    """An annotation OmegaConf's structured configs accept: abstract containers become ``dict``/``list``,
    ``X | None`` keeps its optional part; anything else it cannot check becomes ``Any``."""
    if annotation is inspect.Parameter.empty:
        return Any
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = omegaconf_type(args[0]) if len(args) == 1 else Any
        return Any if inner is Any else typing.Optional[inner]  # noqa: UP045 - built at run time
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return dict[str, Any]
    if origin in (list, tuple, collections.abc.Sequence):
        return list[Any]
    return annotation if annotation in (int, float, str, bool) else Any


def _default(param: inspect.Parameter, kind: Any) -> Any:
    """The field's default: the builder's, with an empty dict for an optional mapping (so that
    ``model.timm_kwargs.drop_path_rate=0.1`` can add to it)."""
    value = None if param.default is inspect.Parameter.empty else param.default
    container = next(
        (c for c in (dict, list) if typing.get_origin(kind) is c or c in typing.get_args(kind)), None
    )
    if container is None:
        container = next(
            (c for c in (dict, list) if any(typing.get_origin(a) is c for a in typing.get_args(kind))), None
        )
    if container is not None and (value is None or isinstance(value, container)):
        return field(default_factory=lambda v=value, c=container: c(v or ()))
    return value


def settings_class(entry: ModelEntry) -> type[ModelSettings]:
    """The dataclass of ``model=<entry.name>``: ``name``, ``num_classes``, ``seed``, then the builder's options."""
    params = inspect.signature(entry.builder, eval_str=True).parameters
    name_default = entry.name
    if entry.named_by_arch:
        name_default = params["arch"].default
    extra = []
    for p in params.values():
        if p.name in _JOB_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        kind = omegaconf_type(p.annotation)
        extra.append((p.name, kind, _default(p, kind)))
    cls = make_dataclass(
        f"{entry.name.title().replace('_', '')}Settings",
        [
            ("name", str, field(default=name_default)),
            ("num_classes", int, field(default="${dataset.num_classes}")),
            ("seed", int, field(default="${seed}", metadata=_SEED_RULE)),
            *extra,
        ],
        bases=(ModelSettings,),
    )
    cls.entry = entry.name
    cls.__doc__ = entry.description
    cls.__module__ = __name__
    return cls


def model_settings_classes() -> dict[str, type[ModelSettings]]:
    """``{registered name: settings class}``, in display order."""
    return {name: settings_class(entry) for name, entry in registry().items()}


__all__ = ["model_settings_classes", "omegaconf_type", "settings_class"]
