"""The building blocks of vvm's typed settings: closed choices as enums, numbers with their allowed range, and the
check that walks a settings tree and names the full key of a bad value.

Settings are plain dataclasses (no omegaconf, no Hydra): the job layer registers them in Hydra's ConfigStore as
the schema of the config groups (:mod:`vvm.schema`), and every layer below receives them as objects.
Types use ``typing.Optional``/``List``/``Dict`` because OmegaConf's structured configs read those.
"""

import difflib
import enum
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from vvm.cka.params import Range

# OmegaConf's marker for a value the config must provide (a plain string, so no omegaconf import here)
MISSING = "???"


class ConfigError(ValueError):
    """A setting that cannot work, found before any work started; the message names the full key."""


class Choice(str, enum.Enum):
    """A closed choice (kernel, estimator, ...): a ``str`` enum whose members print as their value, so that
    ``Kernel.rbf == "rbf"``, f-strings and JSON give ``rbf``."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def choices(name: str, values: tuple[str, ...], doc: str = "") -> type[Choice]:
    """A :class:`Choice` enum whose members are ``values`` (the engine's own tuple: one fact, one place), named
    as of the module that makes it (where it is bound to ``name``), so that it pickles (submitit's launchers)."""
    module = sys._getframe(1).f_globals.get("__name__", __name__)
    cls = Choice(name, {v: v for v in values}, module=module)  # type: ignore[call-overload]
    cls.__doc__ = doc or f"one of {', '.join(values)}"
    return cls


@dataclass(frozen=True)
class OneOf:
    """A value from a short list that mixes types (``auto``, ``True``, ``False``)."""

    allowed: tuple[Any, ...]

    def problem(self, value: Any) -> str | None:
        if any(value is a or (type(value) is type(a) and value == a) for a in self.allowed):
            return None
        return f"must be one of {', '.join(str(a).lower() for a in self.allowed)}"


def number(
    default: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    why: str = "",
) -> Any:
    """A dataclass field holding a number in a range (checked by :func:`check_ranges`)."""
    return field(default=default, metadata={"rule": Range(minimum, above, why, below)})


def seed_field(default: int = 0) -> Any:
    """A seed: numpy seeds its generators with ``0 <= seed < 2**32`` (torch and Python take more, not less)."""
    return number(default, minimum=0, below=2**32, why="numpy and torch are seeded with 0 <= seed < 2**32")


def one_of(default: Any, *allowed: Any) -> Any:
    return field(default=default, metadata={"rule": OneOf(tuple(allowed))})


def not_recipe(default: Any = None, **kw: Any) -> Any:
    """A dataset setting that does not change the training split (paths, loader workers, the CKA pass): left
    out of the checkpoint cache's recipe (:mod:`vvm.train.cache`)."""
    return field(default=default, metadata={"recipe": False, **kw})


def recipe_fields(obj: Any) -> dict[str, Any]:
    """The fields of a settings object that are part of a training recipe (all but those marked
    :func:`not_recipe`), as plain values."""
    return {f.name: plain(getattr(obj, f.name)) for f in fields(obj) if f.metadata.get("recipe", True)}


def plain(value: Any) -> Any:
    """Settings as plain Python values (enums as their strings, dataclasses as dicts)."""
    if isinstance(value, Choice):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def check_ranges(obj: Any, prefix: str = "") -> list[str]:
    """Every field of ``obj`` (a settings tree) that breaks its rule, as ``key=value: why``, keys in full."""
    out: list[str] = []
    if not is_dataclass(obj):
        return out
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        rule = f.metadata.get("rule")
        bad = rule.problem(value) if rule is not None else None
        if bad:
            out.append(f"{key}={value!r} {bad}")
        if is_dataclass(value):
            out += check_ranges(value, key + ".")
    return out


def closest(key: str, known: Iterable[str], prefix: str = "") -> str:
    """``did you mean <prefix>X?`` for the known key closest to ``key``, else the list of known keys."""
    names = sorted(str(k) for k in known if not str(k).startswith("_"))
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if near:
        return f"did you mean {prefix}{near[0]}?"
    return f"the known keys are {', '.join(prefix + k for k in names)}"
