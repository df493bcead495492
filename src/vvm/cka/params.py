"""Parameters of anything registered by name (a measure, a kernel, an analysis): a frozen dataclass ``Params``
whose fields are :func:`option`\\ s, each with its default, the values it may take and why.

One declaration serves three readers: the thing itself (``params.k``), the check of a value from Python
(:func:`check_params`, :func:`make_params`) and the typed settings generated from it
(:mod:`vvm.settings.generate`: ``measure.knn.k``, ``kernel.rbf.frac``, ``analysis.erf.units``), checked when the
config is composed. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Range:
    """What a number may be: ``minimum`` (inclusive), ``above`` and ``below`` (exclusive), finite; ``why`` says
    it."""

    minimum: float | None = None
    above: float | None = None
    why: str = ""
    below: float | None = None

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        why = f": {self.why}" if self.why else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number{why}"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum:g}{why}"
        if self.above is not None and value <= self.above:
            return f"must be > {self.above:g}{why}"
        if self.below is not None and value >= self.below:
            return f"must be < {self.below:g}{why}"
        return None

    @property
    def bounded(self) -> bool:
        return (self.minimum, self.above, self.below) != (None, None, None)


def option(
    default: Any,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    why: str = "",
) -> Any:
    """A parameter: its default, and the values it may take (``choices``) or its range (``minimum`` inclusive,
    ``above``/``below`` exclusive); ``why`` says what it is (error messages and documentation quote it). A list
    default is copied for each instance."""
    meta = {"choices": choices, "range": Range(minimum, above, why, below), "why": why}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoParams:
    """Parameters of something that has none."""


def problems(owner: str, params: Any) -> list[str]:
    """``owner.<field>=<value> ...`` for each parameter outside its ``choices`` or range."""
    out = []
    for f in fields(params):
        value = getattr(params, f.name)
        value = getattr(value, "value", value)  # a settings enum member
        choices, rule = f.metadata.get("choices"), f.metadata.get("range")
        if choices is not None and value not in choices:
            out.append(f"{owner}.{f.name}={value!r} is not supported: use one of {', '.join(choices)}")
        elif rule is not None and rule.bounded:
            bad = rule.problem(value)
            if bad:
                out.append(f"{owner}.{f.name}={value!r} {bad}")
    return out


def check_params(owner: str, params: Any) -> None:
    """Raise ``ValueError`` naming every parameter of ``params`` that is not allowed."""
    found = problems(owner, params)
    if found:
        raise ValueError("; ".join(found))


def make_params(owner: str, cls: type, values: dict[str, Any] | None = None, *, label: str = "") -> Any:
    """``cls(**values)`` checked: an unknown name lists the known ones (``label``, default ``owner``, says whose),
    a value out of range names its key ``owner.<name>``."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values or {}) - set(known))
    if unknown:
        raise ValueError(
            f"{label or owner} has no parameter {', '.join(unknown)} (its parameters: {', '.join(known) or 'none'})"
        )
    params = cls(**(values or {}))
    check_params(owner, params)
    return params


__all__ = ["NoParams", "Range", "check_params", "make_params", "option", "problems"]
