"""The job's config as plain values, and the keys that moved (an old spelling is an error naming the new one).

No vvm imports: every layer may ask here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

# train.* keys that change how fast a training runs, not the weights it gives: they live under train.speed.*
SPEED_KEYS = ("compile", "gpu_resident", "channels_last", "precision", "save_last_every_s")
MOVED_KEYS = {f"train.{k}": f"train.speed.{k}" for k in SPEED_KEYS}


def container(cfg: Any) -> Any:
    """``cfg`` as plain Python values, resolved; unresolved where an interpolation only resolves inside Hydra's
    runtime (``${hydra:...}`` in a config composed without it)."""
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


def plain(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """A config node (or a mapping, or None) as a resolved ``dict``."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        out = OmegaConf.to_container(node, resolve=True)
        assert isinstance(out, dict)
        return out
    return dict(node)


def moved_key_error(key: str) -> str:
    return f"{key} moved to {MOVED_KEYS[key]}: write {MOVED_KEYS[key]}=... instead"


def check_moved_keys(cfg: DictConfig) -> None:
    """Raise ``ValueError`` when ``cfg`` sets a key under its old name (say ``train.compile``)."""
    for old in MOVED_KEYS:
        group, key = old.split(".", 1)
        node = cfg.get(group)
        if isinstance(node, DictConfig) and key in node:
            raise ValueError(moved_key_error(old))


_OVERRIDE = re.compile(r"^[+~]*(?P<key>[\w.]+)(=|$)")


def moved_overrides(overrides: Iterable[str]) -> list[str]:
    """The errors for command-line overrides that use an old key (``train.compile=true``)."""
    out = []
    for o in overrides:
        m = _OVERRIDE.match(o)
        if m and m["key"] in MOVED_KEYS:
            out.append(moved_key_error(m["key"]))
    return out


__all__ = [
    "MOVED_KEYS",
    "SPEED_KEYS",
    "check_moved_keys",
    "container",
    "moved_key_error",
    "moved_overrides",
    "plain",
]
