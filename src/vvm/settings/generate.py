"""Settings generated from what a registered thing declares, so that each key and default is written once: the
one generator of settings classes (models, measures, kernels, analyses; datasets declare theirs as a dataclass).

- :func:`signature_settings`: the settings dataclass of a function's keyword options (a model's builder, as
  hydra-zen's ``builds(..., populate_full_signature=True)`` would): each option with its type (as OmegaConf's
  structured configs read it, :func:`omegaconf_type`) and default;
- :func:`params_settings`: the settings dataclass of one ``Params`` (:mod:`vvm.cka.params`): a field with
  ``choices`` becomes a :class:`~vvm.settings.base.Choice` enum, one with a range a checked number
  (:func:`~vvm.settings.base.check_ranges` names its full key), anything else keeps its type and default;
- :func:`group_settings`: the settings of a group of them (``measure.*``, ``analysis.*``): one field per
  registered name that has parameters, each defaulting to its own settings.

Generated classes are put into the module that asks for them (``module``), so they pickle and Hydra's
ConfigStore can name them.
"""

import collections.abc
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import Field, field, fields, make_dataclass
from typing import Any, get_type_hints

from vvm.settings.base import choices


def _title(name: str) -> str:
    return "".join(part.title() for part in name.replace("-", "_").split("_"))


def _setting(prefix: str, f: Field, hint: Any = None) -> tuple[str, Any, Any]:
    """One parameter as a settings field: a Choice, a number with its range, or as it is (its type ``hint``
    resolved from the ``Params`` class, else the field's type, else its default's)."""
    meta = f.metadata
    default = f.default if f.default is not NO_DEFAULT else f.default_factory()  # type: ignore[misc]
    kind = hint or (f.type if not isinstance(f.type, str) else type(default))
    if meta.get("choices"):
        enum = choices(f"{prefix}{_title(f.name)}", tuple(meta["choices"]), meta.get("why") or "")
        setattr(sys.modules[enum.__module__], enum.__name__, enum)
        return f.name, enum, field(default=enum(default))
    keep = {"rule": meta["range"]} if meta.get("range") is not None and meta["range"].bounded else {}
    if isinstance(default, (list, dict)):
        return f.name, kind, field(default_factory=lambda d=default: type(d)(d), metadata=keep)
    return f.name, kind, field(default=default, metadata=keep)


def _publish(cls: type, module: str, doc: str) -> type:
    cls.__module__ = module
    cls.__doc__ = doc
    setattr(sys.modules[module], cls.__name__, cls)  # importable by name (pickling, Hydra's ConfigStore)
    return cls


def params_settings(name: str, params: type, *, module: str, doc: str = "") -> type:
    """The settings dataclass of ``params`` (a ``Params`` dataclass), named ``<Name>Settings``."""
    prefix = _title(name)
    hints = get_type_hints(params)  # `from __future__ import annotations` leaves the field types as strings
    cls = make_dataclass(
        f"{prefix}Settings", [_setting(prefix, f, hints.get(f.name)) for f in fields(params)]
    )
    return _publish(cls, module, doc or f"the parameters of {name}")


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


def _signature_default(param: inspect.Parameter, kind: Any) -> Any:
    """A parameter's default as a field's: an empty dict/list for an optional container (so that
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


def signature_settings(
    name: str,
    fn: Callable[..., Any],
    *,
    base: type,
    first: Sequence[tuple[str, Any, Any]] = (),
    skip: Sequence[str] = (),
    module: str,
    doc: str = "",
) -> type:
    """The settings dataclass ``<Name>Settings`` (a subclass of ``base``) of ``fn``'s options: the ``first``
    fields (``(name, type, field)``, say the base's fields with this thing's defaults), then every named
    parameter of ``fn`` but those in ``skip``, with its type and default."""
    params = inspect.signature(fn, eval_str=True).parameters
    own = []
    for p in params.values():
        if p.name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        kind = omegaconf_type(p.annotation)
        own.append((p.name, kind, _signature_default(p, kind)))
    cls = make_dataclass(f"{_title(name)}Settings", [*first, *own], bases=(base,))
    return _publish(cls, module, doc or f"the options of {name}")


def group_settings(
    class_name: str, members: Mapping[str, type], *, module: str, key: str, doc: str = ""
) -> tuple[type, dict[str, type]]:
    """``(group class, {name: member settings class})`` for the ``members`` (``{name: Params}``) that have
    parameters; ``key`` is the group's config key (``measure``), for the documentation."""
    each = {
        name: params_settings(
            f"{key}_{name}", params, module=module, doc=f"``{key}.{name}.*``: the parameters of {name}."
        )
        for name, params in members.items()
        if fields(params)
    }
    group = make_dataclass(class_name, [(n, c, field(default_factory=c)) for n, c in each.items()])
    return _publish(group, module, doc or f"``{key}.*``: each one's parameters (those that have any)."), each


def registry_settings(
    class_name: str, registry: Mapping[str, Any], *, module: str, key: str, doc: str = ""
) -> tuple[type, dict[str, type]]:
    """:func:`group_settings` of a registry of classes that each declare ``Params`` (measures, kernels,
    analyses): ``key.<name>.*`` for every registered name that has parameters."""
    params = {name: cls.Params for name, cls in registry.items()}
    return group_settings(class_name, params, module=module, key=key, doc=doc)


__all__ = ["group_settings", "omegaconf_type", "params_settings", "registry_settings", "signature_settings"]
