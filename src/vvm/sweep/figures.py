"""The figures of a sweep's summary (:mod:`vvm.sweep`): the grid of every job's matrix (``summary.png``, and
``summary-<measure>.png`` per measure besides CKA), one figure per per-layer analysis (``summary-<analysis>.png``),
and the orders they follow (families, models, inits)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vvm.sweep.records import (
    JobRecord,
    analysis_records,
    canonical_family,
    job_sort_key,
    measured,
    measures_of,
)

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
            seed = f" · seed {j.seed}" if len({k.seed for k in jobs}) > 1 and j.seed is not None else ""
            panels.append(
                Panel(
                    title=f"{j.model} · {j.init}" + (f" vs {j.compare}" if j.compare else "") + seed,
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

    return {m: save_figure(grid_figure(jobs, m), sweep_dir / f"summary-{m}") for m in measures_of(jobs)}


def grid_figure(jobs: Sequence[JobRecord], measure: str = "cka") -> Any:
    """summary.png (or summary-<measure>.png): the grid, its colour bar named by the measure's quantity (one
    kernel and estimator, or "mixed"), the title and caption from the jobs' facts."""
    from vvm.plots.summary import summary_figure

    names = set(map(str, filter(None, (quantity_of(j, measure) for j in jobs))))
    label = names.pop() if len(names) == 1 else f"{measured(jobs[0], measure)[2]} (mixed settings)"
    return summary_figure(
        grid_rows(jobs, measure),
        title=summary_title(jobs, measure=measure),
        cbar_label=label,
        caption=summary_caption(jobs),
    )


def quantity_of(job: JobRecord, measure: str) -> str | None:
    """How the job's ``<measure>.npz`` names its quantity (``linear CKA (unbiased HSIC₁)``), None without one."""
    from vvm.io import load_npz
    from vvm.plots.style import quantity

    path = job.output_dir / f"{measure}.npz"
    return quantity(measure, load_npz(path)) if job.status == "ok" and path.is_file() else None


def _one(values: set) -> Any:
    values.discard(None)
    return next(iter(values)) if len(values) == 1 else None


def summary_title(jobs: Sequence[JobRecord], sweep_dir: Path | None = None, measure: str = "cka") -> str:
    """``linear CKA on digits · 13/14 jobs ok``: the sweep's facts (its folder is in the caption of no figure:
    the jobs' own facts say what it is)."""
    kernel, dataset = _one({j.kernel for j in jobs}), _one({j.dataset for j in jobs})
    n_ok = sum(j.status == "ok" for j in jobs)
    parts = [f"{kernel or ''} CKA".strip() if measure == "cka" else measured(jobs[0], measure)[2]]
    if dataset:
        parts.append(f"on {dataset}")
    return f"{' '.join(parts)} · {n_ok}/{len(jobs)} jobs ok"


def summary_caption(jobs: Sequence[JobRecord]) -> str:
    """The sample of the sweep's passes and its seeds: ``n = 360 examples in 2 batches · seed 0``."""
    from vvm.plots.style import caption

    seeds = sorted({j.seed for j in jobs if j.seed is not None})
    seed = (
        f"seed {seeds[0]}" if len(seeds) == 1 else (f"seeds {', '.join(map(str, seeds))}" if seeds else None)
    )
    n, b = _one({j.samples for j in jobs}), _one({j.n_batches for j in jobs})
    return caption(n, b, None if n else "sample sizes differ between jobs", seed)


def sweep_name(sweep_dir: str | Path) -> str:
    """``multirun/2026-01-02/03-04-05`` -> ``2026-01-02_03-04-05`` (the last two path parts)."""
    parts = Path(sweep_dir).resolve().parts
    return "_".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def analysis_figures(sweep_dir: Path, jobs: Sequence[JobRecord]) -> dict[str, tuple[Path, Path]]:
    """``summary-<name>.png``/``.pdf`` for each registered analysis (:data:`vvm.analyses.ANALYSES`) the sweep's
    jobs ran: every model on one relative-depth axis, a colour per family, random dashed, trained solid
    (:func:`vvm.plots.analyses_sweep.sweep_figure`). Returns ``{name: (png, pdf)}``."""
    from vvm.analyses import ANALYSES
    from vvm.plots.analyses_sweep import sweep_figure
    from vvm.plots.heatmap import save_figure

    datasets = {j.dataset for j in jobs if j.dataset}
    where = f" on {datasets.pop()}" if len(datasets) == 1 else ""
    out: dict[str, tuple[Path, Path]] = {}
    for name, analysis in ANALYSES.items():
        records = analysis_records(jobs, name)
        if not any(all(k in r for k in analysis.sweep.keys) for r in records):
            if records:
                log.info("sweep summary: %s applies to none of the sweep's models: no figure", name)
            continue
        fig = sweep_figure(name, records, title=f"{analysis.title}{where}")
        png, pdf = save_figure(fig, sweep_dir / f"summary-{name}")
        out[name] = (png, pdf)
    return out
