"""The files of the joint pass (:mod:`vvm.joint`): joint.npz/.csv/.png/.pdf, every cross-model block, the layer
correspondence figure (and each measure's own, ``joint-<measure>.*``), and their W&B run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vvm.cka.joint import JointResult
    from vvm.sweep.records import JointJob

log = logging.getLogger("vvm.joint")


def pair_rows(
    res: JointResult, jobs: list[JointJob], heads: dict[str, str | None] | None = None, measure: str = "cka"
) -> list[dict[str, Any]]:
    """One row per pair of models (A before B in job order); ``heads``: each model's classifier module name."""
    from vvm.cka.correspondence import TOLERANCE, Identification, identification, mean_row_max, records

    by_tag = {j.tag: j for j in jobs}
    rows = []
    for a_i, a in enumerate(res.models):
        for b in res.models[a_i + 1 :]:
            ja, jb = by_tag[a], by_tag[b]
            block = res.block(a, b).numpy()
            same = ja.model == jb.model
            ident = (
                identification(block, res.layers_of(a), res.layers_of(b), res.block(a, b, "stderr").numpy())
                if same
                else Identification(float("nan"), 0, 0, 0)
            )
            rows.append(
                {
                    "model_a": a,
                    "model_b": b,
                    "job_a": ja.job,
                    "job_b": jb.job,
                    "arch_a": ja.model,
                    "arch_b": jb.model,
                    "family_a": ja.family,
                    "family_b": jb.family,
                    "init_a": ja.init,
                    "init_b": jb.init,
                    "layers_a": block.shape[0],
                    "layers_b": block.shape[1],
                    f"mean_{measure}": float(np.nanmean(block)) if not np.isnan(block).all() else None,
                    "mean_row_max": mean_row_max(block),
                    "layer_identification": ident.accuracy,
                    "identification_layers": ident.layers,
                    "identification_ties": ident.ties,
                    "identification_tolerance": TOLERANCE if same else "",
                    "includes_classifier": None
                    if heads is None
                    else any(records(res.layers_of(m), heads.get(m)) for m in (a, b)),
                }
            )
    return rows


def correspondence_panels(res: JointResult, jobs: list[JointJob]) -> list[Any]:
    """One panel per family pair (:func:`vvm.plots.joint.correspondence_panels`, families in the sweep's order)."""
    from vvm.plots.joint import correspondence_panels as panels
    from vvm.sweep.summary import FAMILY_ORDER

    return panels(res, {j.tag: (j.family, j.init) for j in jobs}, FAMILY_ORDER)


def npz_arrays(res: JointResult, by_tag: dict[str, JointJob], measure: str) -> dict[str, Any]:
    """What joint.npz (CKA: ``cka``, ``cka_stderr``, ``hsic_diag``, kernel, estimator) or joint-<measure>.npz
    (``matrix``, ``stderr``, the measure's parameters) holds, with the layers and each model's job, name, family
    and init."""
    if measure == "cka":
        own = dict(
            cka=res.matrix.numpy(),
            cka_stderr=res.stderr.numpy(),
            hsic_diag=res.hsic_xx.numpy(),
            kernel=res.kernel,
            estimator=res.estimator,
        )
    else:
        own = dict(matrix=res.matrix.numpy(), stderr=res.stderr.numpy(), measure=measure, **res.params)
    return dict(
        **own,
        layers=np.array(res.layers_x),
        models=np.array(res.models),
        model_index=res.model_index.numpy(),
        n_samples=res.n_samples,
        n_batches=res.n_batches,
        jobs=np.array([by_tag[m].job for m in res.models]),
        model_names=np.array([by_tag[m].model for m in res.models]),
        families=np.array([by_tag[m].family for m in res.models]),
        inits=np.array([by_tag[m].init for m in res.models]),
    )


def write_outputs(
    res: JointResult,
    jobs: list[JointJob],
    out: Path,
    *,
    title: str,
    extra: dict[str, Any],
    heads: dict[str, str | None] | None = None,
    measure: str = "cka",
) -> dict[str, Any]:
    """joint.npz, joint.csv, joint.png/pdf, pairs/<A>__<B>.png, correspondence.png/pdf; for another measure
    joint-<measure>.npz (``matrix``, ``stderr``, the measure's parameters), .csv, .png/pdf, pairs-<measure>/,
    correspondence-<measure>.png/pdf."""
    import pandas as pd

    from vvm.io import write_bytes, write_npz
    from vvm.plots.heatmap import save_figure
    from vvm.plots.joint import correspondence_figure, joint_figure

    by_tag = {j.tag: j for j in jobs}
    suffix = "" if measure == "cka" else f"-{measure}"
    files: dict[str, Any] = {
        "npz": write_npz(out / f"joint{suffix}.npz", **npz_arrays(res, by_tag, measure), **extra)
    }
    table = pd.DataFrame(pair_rows(res, jobs, heads, measure))
    files["csv"] = write_bytes(out / f"joint{suffix}.csv", table.to_csv(index=False).encode())
    what, note = figure_facts(res, jobs, measure)
    files["png"], files["pdf"] = save_figure(
        joint_figure(
            res.matrix.numpy(),
            res.models,
            res.model_index.numpy(),
            title=title,
            cbar_label=what,
            caption=note,
        ),
        out / f"joint{suffix}",
    )
    files["pairs"] = pair_figures(res, by_tag, out / f"pairs{suffix}", what, note)
    if len(res.models) > 1:
        fig = correspondence_figure(
            correspondence_panels(res, jobs), title=f"best-matching layers\n{title}", caption=note
        )
        files["correspondence_png"], files["correspondence_pdf"] = save_figure(
            fig, out / f"correspondence{suffix}"
        )
    files["table"] = table
    return files


def figure_facts(res: Any, jobs: list[JointJob], measure: str) -> tuple[str, str]:
    """The colour bar's quantity (``linear CKA (unbiased HSIC₁)``, ``mutual 10-NN``) and the caption line (n,
    batches, the jobs' seeds) of the joint pass's figures."""
    from vvm.plots.style import caption, result_quantity

    seeds = sorted({str(j.result.get("seed")) for j in jobs if j.result.get("seed") is not None})
    seed = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" if seeds else None
    return result_quantity(res), caption(res.n_samples, res.n_batches, seed)


def pair_figures(res: Any, by_tag: dict[str, JointJob], folder: Path, what: str, note: str) -> list[Path]:
    """``<folder>/<A>__<B>.png`` per pair of models: the cross-model block with each entry's 95% interval
    half-width beside it, titled by both jobs' facts."""
    from vvm.plots.heatmap import Uncertainty, heatmap_figure, save_figure
    from vvm.plots.style import job_title

    lo, hi = res.interval(0.95)
    halfwidth = ((hi - lo) / 2).numpy()
    paths = []
    for a_i, a in enumerate(res.models):
        for b in res.models[a_i + 1 :]:
            fig = heatmap_figure(
                res.block(a, b).numpy(),
                res.layers_of(a),
                res.layers_of(b),
                title=f"{job_title(by_tag[a].result)}\nvs {job_title(by_tag[b].result)}",
                xlabel=b,
                ylabel=a,
                cbar_label=what,
                caption=note,
                uncertainty=Uncertainty(
                    halfwidth[res.rows_of(a)][:, res.rows_of(b)],
                    "95% interval half-width (t, batches − 1 df)",
                ),
            )
            paths.append(save_figure(fig, folder / f"{a}__{b}", formats=("png",))[0])
    return paths


def log_to_wandb(files: dict[str, Any], jobs: list[JointJob], out: Path, sweep_dir: Path) -> Path | None:
    """The figures and the table in a W&B run (project, group and mode of the jobs' loggers: the sweep's group; mode auto by default)."""
    from vvm.loggers.logger import log_files_run
    from vvm.loggers.wandb_run import sweep_group
    from vvm.settings import WandbSettings
    from vvm.sweep.summary import sweep_name

    loggers = [j.settings.logger for j in jobs if isinstance(j.settings.logger, WandbSettings)]
    projects = {lg.project for lg in loggers}
    modes = {lg.mode for lg in loggers}
    groups = {
        lg.group for lg in loggers
    }  # the sweep's (vvm.loggers.wandb_run.sweep_group) unless logger.group said
    images, tables = {}, {}
    for m, mf in {"cka": files, **files.get("measures", {})}.items():
        key = "joint" if m == "cka" else f"joint/{m}"  # each measure's figures and table under its own key
        if "png" in mf:
            images.update({f"{key}/matrix": mf["png"], **{f"{key}/pairs/{p.stem}": p for p in mf["pairs"]}})
            images.update(
                {f"{key}/correspondence": mf["correspondence_png"]} if "correspondence_png" in mf else {}
            )
            tables[f"{key}/pairs"] = mf["table"]
    try:
        return log_files_run(
            run_dir=out,
            name=f"joint-{sweep_name(sweep_dir)}",
            job_type="joint-cka",
            images=images,
            tables=tables,
            project=projects.pop() if len(projects) == 1 else "vvm",
            group=groups.pop() if len(groups) == 1 else sweep_group(sweep_dir),
            mode=modes.pop() if len(modes) == 1 else None,
            config={"sweep_dir": str(sweep_dir), "models": [j.tag for j in jobs]},
        )
    except Exception as e:  # W&B must not lose the files already written
        log.warning("joint CKA: could not log to W&B (%s: %s); the files are written", type(e).__name__, e)
        return None


def uses_wandb(jobs: list[JointJob]) -> bool:
    from vvm.settings import WandbSettings

    return any(isinstance(j.settings.logger, WandbSettings) for j in jobs)


__all__ = ["correspondence_panels", "log_to_wandb", "pair_rows", "uses_wandb", "write_outputs"]
