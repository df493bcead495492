"""The similarity measures of a job: which ones (``measures=[cka,rsa,knn]``, default ``[cka]``) and their own
parameters (``measure.<name>.<parameter>``, documented in ``conf/measure/default.yaml``).

The parameters' settings are generated from each registered measure's ``Params`` (:mod:`vvm.cka.measures`): a
parameter with ``choices`` becomes a :class:`~vvm.settings.base.Choice` enum, one with a ``minimum`` a checked
number. A measure registered in the engine has its settings here without an edit. CKA's own options stay in
``cka.*`` (:class:`~vvm.settings.CKASettings`): the kernel, the estimator, the pass's batches.
"""

from dataclasses import Field, field, fields, make_dataclass
from typing import Any

from vvm.cka.measures import MEASURES, Measure, make_measure
from vvm.settings.base import choices, number, plain
from vvm.settings.cka import CKASettings

MeasureName = choices("MeasureName", tuple(MEASURES), " | ".join(MEASURES))


def _setting(prefix: str, f: Field) -> tuple[str, Any, Any]:
    """One parameter of a measure as a settings field: a Choice, a number with its minimum, or as it is."""
    meta = f.metadata
    if meta.get("choices"):
        kind = choices(f"{prefix}{f.name.title()}", tuple(meta["choices"]), meta.get("why") or "")
        return f.name, kind, field(default=kind(f.default))
    if meta.get("minimum") is not None:
        return f.name, type(f.default), number(f.default, minimum=meta["minimum"], why=meta.get("why", ""))
    return f.name, type(f.default), field(default=f.default)


def settings_class(name: str, measure: type[Measure]) -> type:
    """The dataclass of ``measure.<name>.*``, generated from the measure's ``Params``."""
    prefix = name.title().replace("_", "")
    cls = make_dataclass(f"{prefix}Settings", [_setting(prefix, f) for f in fields(measure.Params)])
    cls.__module__ = __name__
    cls.__doc__ = (
        f"``measure.{name}.*``: the parameters of the {name} measure (see conf/measure/default.yaml)."
    )
    globals()[cls.__name__] = cls  # importable by name (pickling, Hydra's ConfigStore)
    return cls


MEASURE_SETTINGS = {name: settings_class(name, cls) for name, cls in MEASURES.items() if fields(cls.Params)}
MeasureSettings = make_dataclass(
    "MeasureSettings",
    [(name, cls, field(default_factory=cls)) for name, cls in MEASURE_SETTINGS.items()],
)
MeasureSettings.__module__ = __name__
MeasureSettings.__doc__ = "``measure.*``: each measure's parameters (those measures that have any)."


def measure_params(settings: Any, names: list[Any]) -> dict[str, dict[str, Any]]:
    """``{name: {parameter: value}}`` (plain values) of the measures ``names`` that have parameters."""
    return {str(n): plain(getattr(settings, str(n))) for n in names if hasattr(settings, str(n))}


def job_measures(names: list[Any], settings: Any, cka: CKASettings) -> dict[str, Measure]:
    """The engine's measures a job asks for, with their parameters and the pass's options (``cka.*``)."""
    params = measure_params(settings, names)
    return {str(n): make_measure(str(n), params.get(str(n)), **cka.engine_options()) for n in names}


__all__ = ["MEASURE_SETTINGS", "MeasureName", "MeasureSettings", "job_measures", "measure_params"]
