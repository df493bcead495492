"""Unknown keys, found against the schema without composing twice: command-line overrides before Hydra runs
(``cka.kernal=rbf`` -> "did you mean cka.kernel?"; Hydra alone would suggest adding ``+``), and keys that a
``+key=value`` override or a yaml file added to a typed node after composition."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vvm.schema.store import CHOICE_GROUPS, field_classes, group_class, is_settings
from vvm.settings import closest
from vvm.settings.job import JobSettings


def default_choices(config_dir: Path) -> dict[str, str | None]:
    """The group choices of ``config.yaml``'s defaults list (``model: r18`` ...), read from the file."""
    raw = OmegaConf.load(config_dir / "config.yaml").get("defaults") or []
    out: dict[str, str | None] = {}
    for item in raw:
        if isinstance(item, (Mapping, DictConfig)):
            for k, v in dict(item).items():
                out[str(k).split("@")[0].lstrip("/")] = None if v is None else str(v)
    return out


def key_error(key: str, choices: Mapping[str, str | None]) -> str | None:
    """Why ``key`` (dotted, say ``cka.kernal``) is not a setting of the job, or None when it is (or when the
    node below it takes any key, a ``dict`` such as ``model.timm_kwargs``)."""
    parts = key.split(".")
    kind: Any = JobSettings
    for depth, part in enumerate(parts):
        if depth == 1 and parts[0] in CHOICE_GROUPS:
            kind = group_class(parts[0], choices.get(parts[0]))
            if kind is None:
                return None  # an unknown choice: Hydra says so; no settings: Hydra says the node is null
        if not is_settings(kind):
            return None
        known = field_classes(kind)
        if part not in known:
            parent = ".".join(parts[:depth])
            nested = [
                f"{k}.{part}" for k, sub in known.items() if is_settings(sub) and part in field_classes(sub)
            ]
            if nested:
                prefix = parent + "." if parent else ""
                return f"{key} is not a setting of {parent or 'vvm'}: did you mean {prefix}{nested[0]}?"
            named = depth == 1 and parent in CHOICE_GROUPS and choices.get(parent)
            where = f"{parent} ({choices[parent]})" if named else parent or "vvm"
            return (
                f"{key} is not a setting of {where}: {closest(part, known, parent + '.' if parent else '')}"
            )
        kind = known[part]
    return None


def override_errors(overrides: Iterable[str], config_dir: Path) -> list[str]:
    """The errors for command-line overrides of keys the schema lacks (each sweep choice is checked)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra reports what it cannot parse
        return []
    base = default_choices(config_dir)
    groups: dict[str, list[str | None]] = {}
    keys = []
    for o in parsed:
        name = o.key_or_group
        if name.startswith("hydra") or o.package:
            continue
        if "." in name:
            keys.append(name)
        elif name in CHOICE_GROUPS:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            groups[name] = [None if v in (None, "null") else str(v) for v in values]
    combos = [dict(base)]
    for group, values in groups.items():
        combos = [{**c, group: v} for c in combos for v in values]
    errors = []
    for key in keys:
        problems = {key_error(key, c) for c in combos} - {None}
        errors += sorted(p for p in problems if p)
    return errors


def added_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys of typed nodes in the composed ``cfg`` that their settings class lacks (added with ``+``)."""
    errors = []
    kind = OmegaConf.get_type(cfg)
    known = field_classes(kind) if is_settings(kind) else None
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if known is not None and key not in known:
            parent = prefix.rstrip(".")
            errors.append(f"{full} is not a setting of {parent or 'vvm'}: {closest(str(key), known, prefix)}")
            continue
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        node = cfg[key]
        if isinstance(node, DictConfig):
            errors += added_keys(node, full + ".")
    return errors


__all__ = ["added_keys", "default_choices", "key_error", "override_errors"]
