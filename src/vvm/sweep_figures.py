"""The figures of a sweep's summary (:mod:`vvm.sweep`): the grid of every job's matrix (``summary.png``, and
``summary-<measure>.png`` per measure besides CKA), one figure per per-layer analysis (``summary-<analysis>.png``),
and the orders they follow (families, models, inits)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vvm.records import JobRecord, analysis_records, canonical_family, job_sort_key, measured, measures_of

log = logging.getLogger("vvm.sweep")

INIT_ORDER = ("pretrained", "random")


def family_order() -> tuple[str, ...]:
    """The families in display order (resnet lambda vit timm), from the model registry."""
    from vvm.models import families  # the registry imports torch: not at import, which a --help waits for

    return tuple(dict.fromkeys(canonical_family(f) for f in families()))


def model_order() -> tuple[str, ...]:
    from vvm.models import display_order

    return tuple(display_order())


def _order(value: str | None, known: Sequence[str]) -> tuple[int, str]:
    return (known.index(value), "") if value in known else (len(known), str(value))


def grid_rows(jobs: Sequence[JobRecord], measure: str = "cka") -> list[tuple[str, list[Any]]]:
    """The figure's rows: one per family (and variant), panels ordered by model, then init; the panels show
    ``measure``'s matrices (``cka``, or ``rsa``, ``knn`` for ``summary-<measure>.png``)."""
    from vvm.plots.summary import Panel

    families, models = family_order(), model_order()
    groups: dict[tuple[str, str], list[JobRecord]] = {}
    for j in jobs:
        groups.setdefault((j.family, j.variant), []).append(j)
    rows = []
    for family, variant in sorted(groups, key=lambda k: (_order(k[0], families), k[1])):
        members = sorted(
            groups[(family, variant)],
            key=lambda j: (_order(j.model, models), _order(j.init, INIT_ORDER), job_sort_key(j.job)),
        )
        panels = []
        for j in members:
            matrix, mean, label = measured(j, measure)
            sub = []
            if mean is not None:
                sub.append(f"mean {label} {mean:.2f}")
            if j.accuracy is not None:
                sub.append(f"acc {100 * j.accuracy:.0f}%")
            note = None
            if j.status != "ok" or matrix is None:
                note = f"{j.status}: {j.error or f'no {label} matrix'}"
            panels.append(
                Panel(
                    title=f"{j.model} · {j.init}" + (f" vs {j.compare}" if j.compare else ""),
                    matrix=matrix,
                    layers_x=j.layers_x,
                    layers_y=j.layers_y,
                    subtitle=" · ".join(sub) or None,
                    note=note,
                )
            )
        rows.append((family if not variant else f"{family}\n{variant}", panels))
    return rows


def measure_figures(sweep_dir: Path, jobs: Sequence[JobRecord]) -> dict[str, tuple[Path, Path]]:
    """``summary-<measure>.png``/``.pdf`` for each measure besides CKA the jobs computed (``measures=[...]``):
    the grid of summary.png with that measure's matrices. Returns ``{measure: (png, pdf)}``."""
    from vvm.plots.heatmap import save_figure
    from vvm.plots.summary import summary_figure

    out = {}
    for m in measures_of(jobs):
        fig = summary_figure(grid_rows(jobs, m), title=summary_title(jobs, sweep_dir, measure=m))
        out[m] = save_figure(fig, sweep_dir / f"summary-{m}")
    return out


def summary_title(jobs: Sequence[JobRecord], sweep_dir: Path, measure: str = "cka") -> str:
    def one(values: set) -> str | None:
        values.discard(None)
        return str(next(iter(values))) if len(values) == 1 else None

    kernel, dataset = one({j.kernel for j in jobs}), one({j.dataset for j in jobs})
    samples = one({j.samples for j in jobs})
    n_ok = sum(j.status == "ok" for j in jobs)
    parts = [f"{kernel or ''} CKA".strip() if measure == "cka" else measured(jobs[0], measure)[2]]
    if dataset:
        parts.append(f"on {dataset}")
    if samples:
        parts.append(f"({samples} examples)")
    return f"{' '.join(parts)} - {n_ok}/{len(jobs)} jobs ok - {sweep_name(sweep_dir)}"


def sweep_name(sweep_dir: str | Path) -> str:
    """``multirun/2026-01-02/03-04-05`` -> ``2026-01-02_03-04-05`` (the last two path parts)."""
    parts = Path(sweep_dir).resolve().parts
    return "_".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


ANALYSIS_TITLES = {
    "erf": "effective receptive fields",
    "attention": "mean attention distance",
    "probe": "linear probes",
}


def analysis_figures(sweep_dir: Path, jobs: Sequence[JobRecord]) -> dict[str, tuple[Path, Path]]:
    """``summary-<kind>.png``/``.pdf`` for each analysis (erf, attention, probe) the sweep's jobs ran: every model
    on one relative-depth axis, a colour per family, random dashed, trained solid
    (:func:`vvm.plots.analyses_sweep.sweep_figure`). Returns ``{kind: (png, pdf)}``."""
    from vvm.plots.analyses_sweep import sweep_figure
    from vvm.plots.heatmap import save_figure

    datasets = {j.dataset for j in jobs if j.dataset}
    where = f" on {datasets.pop()}" if len(datasets) == 1 else ""
    out: dict[str, tuple[Path, Path]] = {}
    for kind, title in ANALYSIS_TITLES.items():
        records = analysis_records(jobs, kind)
        if not any("layers" in r or "blocks" in r for r in records):
            if records:
                log.info("sweep summary: %s applies to none of the sweep's models: no figure", kind)
            continue
        fig = sweep_figure(kind, records, title=f"{title}{where} - {sweep_name(sweep_dir)}")
        png, pdf = save_figure(fig, sweep_dir / f"summary-{kind}")
        out[kind] = (png, pdf)
    return out
