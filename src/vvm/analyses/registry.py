"""What a per-layer analysis is, and the registry that names them (``analyses=[erf,attention,probe]``).

An analysis is one file: a class registered with :func:`register_analysis` that declares

- ``name`` (its key: ``analyses=[<name>]``, ``analysis.<name>.*``, ``<name>.npz``, W&B's ``analyses/<name>``) and
  ``title`` (what its figures are called);
- ``Params``: a frozen dataclass of :func:`~vvm.cka.params.option`\\ s, its parameters; their settings
  (``analysis.<name>.<param>``) are generated from it (:mod:`vvm.analyses`). A ``problems(owner)`` method on it
  returns the rules that tie its fields together (checked when the config is composed and by :func:`run_analyses`);
- :meth:`Analysis.run`: model, tracked layers, datamodule, parameters, seed -> a result with ``arrays()`` (what
  its ``.npz`` holds) and ``summary()`` (its result.json entry), or a :class:`NotApplicable`;
- :meth:`Analysis.figure`: one job's figure drawn from those arrays; :meth:`Analysis.scalars`: the numbers logged
  under ``analyses/<name>/`` from its result.json entry;
- ``sweep`` (:class:`SweepPanels`) and :meth:`Analysis.reference`: the sweep's cross-family figure
  (:func:`vvm.plots.analyses_sweep.sweep_figure`).

:func:`run_analyses` runs any of them for one job and writes their files; the loggers, the sweep's figures and
the report loop over :data:`ANALYSES`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from vvm.cka.params import NoParams, make_params
from vvm.cka.presets import LayerSpec
from vvm.cka.registry import Registry
from vvm.io import write_npz


@dataclass(frozen=True)
class NotApplicable:
    """An analysis that does not apply to a model: a one-line ``note`` saying why."""

    analysis: str
    note: str

    def summary(self) -> dict[str, Any]:
        return {"applies": False, "note": self.note}


@dataclass(frozen=True)
class SweepPanels:
    """What an analysis's cross-family sweep figure draws: one panel per ``(array key, y label)`` against each
    record's relative ``depth`` (a ``[layers, k]`` array: a dot per column and their mean as the line); a record
    is drawn when it holds every key of ``needs`` (default: the panels' keys); ``scale``: a key whose maximum
    divides the values (the image size: radii as fractions of it); ``top``: the y axis's upper limit (None:
    automatic); ``last``: what relative depth 1 is."""

    panels: tuple[tuple[str, str], ...]
    needs: tuple[str, ...] = ()
    scale: str | None = None
    top: float | None = 1.02
    last: str = "last tracked layer"

    @property
    def keys(self) -> tuple[str, ...]:
        return self.needs or tuple(k for k, _ in self.panels)


class Analysis:
    """A per-layer analysis (see the module docstring). Subclasses set ``name``, ``title``, ``Params`` and
    ``sweep`` and implement :meth:`run`, :meth:`figure` and :meth:`scalars`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    sweep: ClassVar[SweepPanels]

    def run(self, model: Any, layers: LayerSpec, dm: Any, params: Any, seed: int) -> Any:
        raise NotImplementedError

    def figure(self, arrays: Mapping[str, Any], title: str | None = None) -> Any:
        """One job's figure (a matplotlib ``Figure``) from the arrays its ``.npz`` holds."""
        raise NotImplementedError

    def scalars(self, entry: Mapping[str, Any]) -> dict[str, float]:
        """Numbers from its result.json ``entry``, logged as ``analyses/<name>/<key>`` (the seconds are added
        for every analysis)."""
        return {}

    def reference(self, record: Mapping[str, Any]) -> tuple[float, str] | None:
        """A dotted reference line of the sweep figure for one record (value, label), if any."""
        return None

    def params(self, values: Any = None) -> Any:
        """Its ``Params`` from ``values`` (a ``Params``, a settings object or a mapping; None: the defaults),
        checked: ranges, choices and the ``problems`` of the parameters together."""
        owner = f"analysis.{self.name}"
        params = make_params(owner, self.Params, _values(values), label=f"analysis {self.name}")
        found = problems(self.name, params)
        if found:
            raise ValueError("; ".join(found))
        return params

    def write(self, result: Any, out_dir: str | Path, title: str | None = None) -> dict[str, Any]:
        """``<name>.npz``, ``<name>.png`` and ``.pdf`` of a result (nothing for a :class:`NotApplicable`);
        returns its result.json entry: the summary and the files."""
        from vvm.plots.heatmap import save_figure

        if isinstance(result, NotApplicable):
            return result.summary()
        out_dir = Path(out_dir)
        arrays = result.arrays()
        npz = write_npz(out_dir / f"{self.name}.npz", **arrays)
        figs = save_figure(self.figure(arrays, title), out_dir / self.name)
        return {
            **result.summary(),
            "files": {"npz": str(npz), **{p.suffix.lstrip("."): str(p) for p in figs}},
        }


def _values(obj: Any) -> dict[str, Any]:
    """``{field: plain value}`` of a dataclass (settings or ``Params``) or a mapping; ``{}`` for None."""
    if obj is None:
        return {}
    items = obj.items() if isinstance(obj, Mapping) else ((f.name, getattr(obj, f.name)) for f in fields(obj))
    return {k: getattr(v, "value", v) for k, v in items}  # a settings enum member as its value


ANALYSES: Registry[Analysis] = Registry("analysis", "{kind} {name!r} is not known: use one of {known}")
register_analysis = ANALYSES.register


def problems(name: str, params: Any) -> list[str]:
    """The cross-field rules of analysis ``name``'s parameters (its ``Params.problems``), each naming its key."""
    hook = getattr(params, "problems", None)
    return list(hook(f"analysis.{name}")) if hook is not None else []


def settings_problems(settings: Any) -> list[str]:
    """The cross-field rules of every analysis's settings (``analysis.*``, the job's ``AnalysisSettings``)."""
    out: list[str] = []
    for name, cls in ANALYSES.items():
        values = getattr(settings, name, None)
        if values is not None and hasattr(cls.Params, "problems"):
            out += problems(name, cls.Params(**_values(values)))
    return out


def check_names(names: Sequence[str]) -> list[str]:
    """The analyses asked for, in order, without repeats; an unknown name is an error that lists the known."""
    names = [str(n) for n in names]  # AnalysisName members are their strings
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ValueError(f"analyses={names}: {unknown} unknown; choose from {', '.join(ANALYSES)}")
    return list(dict.fromkeys(names))


def run_analyses(
    names: Sequence[str],
    model: Any,
    layers: LayerSpec,
    dm: Any,
    out_dir: str | Path,
    settings: Any = None,
    *,
    title: str | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run the analyses ``names`` (any registered: erf, attention, probe, ...) on ``model`` (a VisionModel with
    its final weights, on its device) for the tracked ``layers`` (the CKA pass's spec), write their files into
    ``out_dir`` and return ``{name: result.json entry}``; each entry has ``seconds``. ``settings``: the job's
    ``AnalysisSettings`` (``analysis.*``), or ``{name: parameters}`` (a mapping or ``Params`` per name; a name
    left out takes its defaults). ``seed`` (the job's) seeds what an analysis draws at random."""
    out: dict[str, dict[str, Any]] = {}
    for name in check_names(names):
        analysis = ANALYSES.make(name)
        given = settings.get(name) if isinstance(settings, Mapping) else getattr(settings, name, None)
        params = analysis.params(given)
        t = time.perf_counter()
        entry = analysis.write(analysis.run(model, layers, dm, params, seed), out_dir, title)
        entry["seconds"] = round(time.perf_counter() - t, 3)
        out[name] = entry
    return out


__all__ = [
    "ANALYSES",
    "Analysis",
    "NotApplicable",
    "SweepPanels",
    "check_names",
    "problems",
    "register_analysis",
    "run_analyses",
    "settings_problems",
]
