"""The analyses of one job, from a model, its tracked layers and its datamodule to files and result.json
entries: ``erf.npz``/``attention.npz``/``probe.npz``, a figure of each (``.png`` and ``.pdf``), and per analysis
a small dict (its summary, the seconds it took, the files written; ``files["png"]`` is the image to log).

ERF and attention read the first ``n_images`` examples of the CKA pass's own batch plan
(``dm.cka_batches()``: the same seeded order); the probe reads the training and test splits
(:func:`~vvm.analyses.probe.probe_datamodule`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vvm.analyses.attention import (
    AttentionResult,
    NotApplicable,
    mean_attention_distance,
    not_applicable,
)
from vvm.analyses.common import first_images
from vvm.analyses.erf import ERFResult, effective_receptive_fields
from vvm.analyses.probe import ProbeResult, probe_datamodule
from vvm.cka.presets import LayerSpec
from vvm.io import write_npz
from vvm.plots.analyses import attention_figure, erf_figure, probe_figure
from vvm.plots.heatmap import save_figure
from vvm.settings.analyses import ANALYSES, AnalysisSettings


def check_names(names: Sequence[str]) -> list[str]:
    """The analyses asked for, in order, without repeats; an unknown name is an error that lists the known."""
    names = [str(n) for n in names]  # AnalysisName members are their strings
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ValueError(f"analyses={names}: {unknown} unknown; choose from {', '.join(ANALYSES)}")
    return list(dict.fromkeys(names))


def _files(paths: Sequence[Path]) -> dict[str, str]:
    return {p.suffix.lstrip("."): str(p) for p in paths}


def write_erf(res: ERFResult, out_dir: str | Path, *, title: str | None = None) -> dict[str, Any]:
    """erf.npz, erf.png, erf.pdf; returns the result.json entry."""
    out_dir = Path(out_dir)
    arrays = res.arrays()
    npz = write_npz(out_dir / "erf.npz", **arrays)
    figs = save_figure(erf_figure(arrays, title=title), out_dir / "erf")
    return {**res.summary(), "files": {"npz": str(npz), **_files(figs)}}


def write_attention(
    res: AttentionResult | NotApplicable, out_dir: str | Path, *, title: str | None = None
) -> dict[str, Any]:
    """attention.npz, attention.png, attention.pdf (nothing for a model it does not apply to)."""
    if isinstance(res, NotApplicable):
        return res.summary()
    out_dir = Path(out_dir)
    arrays = res.arrays()
    npz = write_npz(out_dir / "attention.npz", **arrays)
    figs = save_figure(attention_figure(arrays, title=title), out_dir / "attention")
    return {**res.summary(), "files": {"npz": str(npz), **_files(figs)}}


def write_probe(res: ProbeResult, out_dir: str | Path, *, title: str | None = None) -> dict[str, Any]:
    """probe.npz, probe.png, probe.pdf."""
    out_dir = Path(out_dir)
    arrays = res.arrays()
    npz = write_npz(out_dir / "probe.npz", **arrays)
    figs = save_figure(probe_figure(arrays, title=title), out_dir / "probe")
    return {**res.summary(), "files": {"npz": str(npz), **_files(figs)}}


def run_analyses(
    names: Sequence[str],
    model: nn.Module,
    layers: LayerSpec,
    dm: Any,
    out_dir: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    title: str | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run the analyses ``names`` (any of ``erf``, ``attention``, ``probe``) on ``model`` (a VisionModel with
    its final weights, on its device) for the tracked ``layers`` (the CKA pass's spec), write their files into
    ``out_dir`` and return ``{name: result.json entry}``; each entry has ``seconds``. ``seed`` seeds the
    probe's choice of training examples and the ERF's sample of units (the job's seed)."""
    settings = settings or AnalysisSettings()
    out: dict[str, dict[str, Any]] = {}
    for name in check_names(names):
        t = time.perf_counter()
        label = f"{title} - {name}" if title else None
        if name == "erf":
            images = first_images(dm.cka_batches(), settings.erf.n_images)
            e = settings.erf
            res = effective_receptive_fields(
                model,
                layers,
                images,
                batch_size=e.batch_size,
                mode=str(e.mode),
                units=e.units,
                units_per_image=e.units_per_image,
                seed=seed,
            )
            entry = write_erf(res, out_dir, title=label)
        elif name == "attention":
            s = settings.attention
            att = not_applicable(model) or mean_attention_distance(
                model,
                first_images(dm.cka_batches(), s.n_images),
                batch_size=s.batch_size,
                renormalise=s.renormalise,
            )
            entry = write_attention(att, out_dir, title=label)
        else:
            res = probe_datamodule(model, layers, dm, settings.probe, seed=seed)
            entry = write_probe(res, out_dir, title=label)
        entry["seconds"] = round(time.perf_counter() - t, 3)
        out[name] = entry
    return out
