"""Settings generated from what a registered thing declares, so that each key and default is written once.

- :func:`params_settings`: the settings dataclass of one ``Params`` (:mod:`vvm.cka.params`): a field with
  ``choices`` becomes a :class:`~vvm.settings.base.Choice` enum, one with a range a checked number
  (:func:`~vvm.settings.base.check_ranges` names its full key), anything else keeps its type and default;
- :func:`group_settings`: the settings of a group of them (``measure.*``, ``analysis.*``): one field per
  registered name that has parameters, each defaulting to its own settings.

Generated classes are put into the module that asks for them (``module``), so they pickle and Hydra's
ConfigStore can name them.
"""

import sys
from collections.abc import Mapping
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


__all__ = ["group_settings", "params_settings"]
