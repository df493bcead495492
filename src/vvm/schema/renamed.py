"""Config keys that were renamed, in one table (old -> new), and its two readers: command-line overrides before
Hydra composes them (:func:`rename_overrides`: ``python -m vvm`` and :func:`vvm.schema.compose`) and a stored
config (result.json's ``config``, read back by :func:`vvm.schema.from_record` and by resume:
:func:`rename_config`). An old key is taken as its new one with one ``FutureWarning`` naming the new key; the
old keys are accepted for one release.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

# the similarity pass's keys were cka.* while CKA was its only measure (issue 26); the RBF's options are the
# kernel's own parameters
_PASS_KEYS = (
    "layers",
    "other_layers",
    "batch_size",
    "shuffle",
    "max_samples",
    "every_n_epochs",
    "precision",
    "tf32",
    "colour_range",
)
RENAMED: dict[str, str] = {
    **{f"cka.{k}": f"similarity.{k}" for k in _PASS_KEYS},
    "cka.rbf_frac": "kernel.rbf.frac",
    "cka.rbf_bandwidth": "kernel.rbf.bandwidth",
}

# an override: an optional prefix (+, ++, ~), the dotted key, then = and the value (or nothing: ~key)
_OVERRIDE = re.compile(r"^(\+\+|\+|~)?([A-Za-z_][\w.]*)(=.*)?$", re.DOTALL)


def deprecation(old: str) -> str:
    return f"{old} is deprecated: use {RENAMED[old]}"


def _warn(old: str) -> None:
    warnings.warn(deprecation(old), FutureWarning, stacklevel=3)


def rename_override(override: str) -> str:
    """``override`` with an old key replaced by its new one (a warning names it); any other as it is."""
    found = _OVERRIDE.match(override)
    if found is None or found.group(2) not in RENAMED:
        return override
    prefix, key, rest = found.group(1) or "", found.group(2), found.group(3) or ""
    _warn(key)
    return f"{prefix}{RENAMED[key]}{rest}"


def rename_overrides(overrides: list[str]) -> list[str]:
    """Each of ``overrides`` through :func:`rename_override`."""
    return [rename_override(o) for o in overrides]


def rename_config(config: Any, *, warn: bool = True) -> Any:
    """A stored config (nested plain dicts) with each old key moved to its new place (a warning for each, unless
    ``warn`` is false); a value stored under the new key as well wins. Anything but a dict comes back as it is."""
    if not isinstance(config, dict):
        return config
    out = copy.deepcopy(config)
    for old, new in RENAMED.items():
        group, key = old.split(".", 1)
        if not isinstance(out.get(group), dict) or key not in out[group]:
            continue
        value = out[group].pop(key)
        if warn:
            _warn(old)
        *path, last = new.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node.setdefault(last, value)
    return out


__all__ = ["RENAMED", "deprecation", "rename_config", "rename_override", "rename_overrides"]
