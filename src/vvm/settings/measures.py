"""The similarity measures of a job: which ones (``measures=[cka,rsa,knn]``, default ``[cka]``) and their own
parameters (``measure.<name>.<parameter>``, documented in ``conf/measure/default.yaml``).

The parameters' settings are generated from each registered measure's ``Params`` (:mod:`vvm.cka.measures`): a
parameter with ``choices`` becomes a :class:`~vvm.settings.base.Choice` enum, one with a ``minimum`` a checked
number. A measure registered in the engine has its settings here without an edit. CKA's own options stay in
``cka.*`` (:class:`~vvm.settings.CKASettings`: the kernel, the estimator); the pass's in ``similarity.*``.
"""

from typing import Any

from vvm.cka.measures import MEASURES, Measure, make_measure
from vvm.settings.base import choices, plain
from vvm.settings.generate import registry_settings

MeasureName = choices("MeasureName", tuple(MEASURES), " | ".join(MEASURES))


MEASURE_SETTINGS: dict[str, type]
MeasureSettings, MEASURE_SETTINGS = registry_settings(
    "MeasureSettings",
    MEASURES,
    module=__name__,
    key="measure",
    doc="``measure.*``: each measure's parameters (those measures that have any; conf/measure/default.yaml).",
)


def measure_params(settings: Any, names: list[Any]) -> dict[str, dict[str, Any]]:
    """``{name: {parameter: value}}`` (plain values) of the measures ``names`` that have parameters."""
    return {str(n): plain(getattr(settings, str(n))) for n in names if hasattr(settings, str(n))}


def job_measures(names: list[Any], settings: Any, engine: dict[str, Any]) -> dict[str, Measure]:
    """The engine's measures a job asks for, with their parameters and the pass's options (``engine``:
    :func:`vvm.settings.cka.engine_options`, ``JobSettings.engine_options()``)."""
    params = measure_params(settings, names)
    return {str(n): make_measure(str(n), params.get(str(n)), **engine) for n in names}


__all__ = ["MEASURE_SETTINGS", "MeasureName", "MeasureSettings", "job_measures", "measure_params"]
