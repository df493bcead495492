"""Sweeps (Hydra multiruns): the summary of a sweep directory, the Hydra callback that writes it, and the
rule that one failing job does not stop the others.

A sweep is ``python -m vvm -m ...``; each job writes ``result.json`` and ``cka.npz`` into its own subdirectory
of the sweep dir (``multirun/<date>/<time>/<job number>/``). When every job has returned,
:class:`SweepSummary` (registered under ``hydra.callbacks`` in conf/config.yaml, so it runs for any multirun)
reads those files back and writes, atomically, into the sweep dir:

- ``summary.png`` / ``summary.pdf``: every job's heatmap in one grid, one row per model family, the inits side
  by side, one colour scale [0, 1] (NaN grey); a failed job's panel shows its error;
- ``summary.csv``: one row per job (model, family, init, dataset, status, layers, samples, accuracy, mean CKA,
  seconds, error, ...; ``mean_rsa``, ``mean_knn`` when the jobs computed those measures);
- ``summary-<measure>.png``/``.pdf`` for each measure besides CKA the jobs computed (``measures=[cka,rsa,knn]``):
  the same grid with that measure's matrices;
- when the jobs ran per-layer analyses (``analyses=[erf,attention,probe]``): ``summary-<analysis>.png``/``.pdf``,
  every model on one relative-depth axis, a colour per family, random inits dashed and trained ones solid;
- when the jobs logged to W&B: the grid, the measures' and the analyses' figures and the table in a W&B run of the
  sweep's group (the jobs' W&B mode); a W&B failure is logged and never fails the sweep.

Failing jobs do not stop the sweep: :func:`vvm.job.task.run_job` records a failure in the job's ``result.json`` and
returns, and the summary lists it. The sweep itself exits 0 once its summary is written, unless
``hydra.callbacks.sweep_summary.fail_on_error=true``.

Resuming. ``resume=true`` with the same ``hydra.sweep.dir`` reruns the same jobs into the same subdirectories;
:func:`vvm.job.task.run_job` skips a job whose directory already holds a complete result of the same config, and
the summary covers every job. ``python -m vvm.sweep resume DIR`` rebuilds that command from ``DIR/multirun.yaml``
and ``python -m vvm.sweep summary DIR`` rewrites the summary of a sweep directory (after a crash or a cancel).
Jobs are numbered in the order of the sweep, so a resume must sweep the same values (a job whose stored config
differs is computed again, with a warning naming the keys).

Families and the order of models come from the model registry (:mod:`vvm.models`).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vvm.io import InputError, exit_with_error
from vvm.sweep.figures import (
    analysis_figures,
    family_order,
    grid_figure,
    measure_figures,
    model_order,
    sweep_name,
)
from vvm.sweep.records import (
    JobRecord,
    collect_jobs,
    summary_columns,
    sweep_jobs,
)

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "job",
    "model",
    "family",
    "init",
    "compare",
    "dataset",
    "variant",
    "status",
    "layers",
    "samples",
    "accuracy",
    "mean_cka",
    "seconds",
    "error",
    "output_dir",
)


def __getattr__(name: str) -> tuple[str, ...]:
    """``FAMILY_ORDER`` and ``MODEL_ORDER``, computed when first asked for (see :func:`family_order`)."""
    if name == "FAMILY_ORDER":
        return family_order()
    if name == "MODEL_ORDER":
        return model_order()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------- the summary
def write_summary(
    sweep_dir: str | Path, *, wandb_group: str | None = None, log_wandb: bool = True
) -> dict[str, Any]:
    """Read every job of ``sweep_dir`` and write summary.csv, summary.png and summary.pdf there (atomically);
    log them to W&B when the jobs used W&B. Returns ``{"jobs": [...], "files": {...}, "failed": [...]}``."""
    import pandas as pd

    from vvm.io import write_bytes
    from vvm.plots.heatmap import save_figure

    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        log.warning("sweep summary: no job directories in %s", sweep_dir)
        return {"jobs": [], "files": {}, "failed": []}
    # object dtype: integer columns stay integers next to missing values (a failed job has no layer count)
    df = pd.DataFrame([j.row() for j in jobs], columns=summary_columns(jobs, SUMMARY_COLUMNS), dtype=object)
    files = {"csv": write_bytes(sweep_dir / "summary.csv", df.to_csv(index=False).encode())}
    per_measure = measure_figures(sweep_dir, jobs)
    files.update(
        {f"{m}_{kind}": p for m, pair in per_measure.items() for kind, p in zip(("png", "pdf"), pair)}
    )
    files["png"], files["pdf"] = save_figure(grid_figure(jobs), sweep_dir / "summary")
    analyses = analysis_figures(sweep_dir, jobs)
    for kind, (png, pdf) in analyses.items():
        files[f"{kind}_png"], files[f"{kind}_pdf"] = png, pdf
    failed = [j for j in jobs if j.status != "ok"]
    log.info("sweep summary: %d/%d jobs ok -> %s", len(jobs) - len(failed), len(jobs), files["png"])
    for j in failed:
        log.warning("sweep summary: job %s (%s, %s) %s: %s", j.job, j.model, j.init, j.status, j.error)
    if log_wandb:
        figures = {f"summary/{m}": png for m, (png, _) in per_measure.items()}
        figures.update({f"summary/{kind}": png for kind, (png, _) in analyses.items()})
        files_logged = log_summary_to_wandb(
            sweep_dir, jobs, df, files["png"], group=wandb_group, figures=figures
        )
        if files_logged:
            files["wandb"] = files_logged
    return {"jobs": jobs, "files": files, "failed": failed}


def wandb_loggers(jobs: Sequence[JobRecord]) -> list[dict[str, Any]]:
    """The W&B logger settings (as stored in result.json) of the jobs that logged to W&B."""
    return [j.logger for j in jobs if j.logger and "project" in j.logger]


def log_summary_to_wandb(
    sweep_dir: Path,
    jobs: Sequence[JobRecord],
    table: Any,
    image: Path,
    *,
    group: str | None = None,
    figures: dict[str, Path] | None = None,
) -> Path | None:
    """Log the grid, the analyses' ``figures`` (key -> image) and the table to a W&B run of the sweep's group,
    when the jobs used W&B (:func:`vvm.loggers.logger.log_files_run`, the one helper for runs made of files).

    Project, mode and group come from the jobs' logger settings: the jobs' group when they share one (say
    ``logger.group=my-study``; by default every job of a sweep has the sweep's group), else
    ``sweep-<date>_<time>``. Mode: ``WANDB_MODE``, else the jobs' ``mode``, decided as a job's is
    (:func:`vvm.loggers.wandb_run.choose_mode`: ``auto`` is online when logged in and W&B answers). Never raises: W&B trouble is logged. Returns the W&B run directory, or None.
    """
    from vvm.loggers.logger import log_files_run
    from vvm.loggers.wandb_run import choose_mode, sweep_group

    loggers = wandb_loggers(jobs)
    if not loggers:
        return None

    def shared(key: str) -> str | None:
        vals = {str(lg.get(key)) for lg in loggers if lg.get(key) is not None}
        return vals.pop() if len(vals) == 1 else None

    project = shared("project") or "vvm"
    group = group or shared("group") or sweep_group(sweep_dir)
    mode = choose_mode(os.environ.get("WANDB_MODE") or shared("mode")).mode
    n_ok = sum(j.status == "ok" for j in jobs)
    try:
        run_dir = log_files_run(
            run_dir=sweep_dir,
            name=f"summary-{sweep_name(sweep_dir)}",
            job_type="sweep-summary",
            images={"summary/grid": image, **(figures or {})},
            tables={"summary/jobs": table},
            project=project,
            group=group,
            mode=mode,
            config={"sweep_dir": str(sweep_dir), "jobs": len(jobs)},
            summary={"jobs": len(jobs), "jobs_ok": n_ok, "jobs_failed": len(jobs) - n_ok},
        )
    except Exception as e:  # W&B must never fail the sweep
        log.warning(
            "sweep summary: could not log to W&B (%s: %s); the summary files are written", type(e).__name__, e
        )
        return None
    log.info("sweep summary: logged to W&B (%s, project %s, group %s)", mode, project, group)
    return run_dir


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, summarise the sweep dir (see :func:`write_summary`).

    ``fail_on_error=true``: exit with status 1 after writing the summary when a job failed (for CI); the default
    exits 0 and lists the failures in the log and in summary.csv. ``wandb_group``: the W&B group of the summary run.
    """

    def __init__(
        self, enabled: bool = True, fail_on_error: bool = False, wandb_group: str | None = None
    ) -> None:
        self.enabled = enabled
        self.fail_on_error = fail_on_error
        self.wandb_group = wandb_group

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            out = write_summary(sweep_dir, wandb_group=self.wandb_group)
        except Exception:
            log.exception(
                "sweep summary: failed to summarise %s (rerun: python -m vvm.sweep summary %s)",
                sweep_dir,
                sweep_dir,
            )
            if self.fail_on_error:
                raise SystemExit(1) from None
            return
        if self.fail_on_error and out["failed"]:
            log.error("sweep summary: %d job(s) did not finish ok (fail_on_error=true)", len(out["failed"]))
            raise SystemExit(1)


# ---------------------------------------------------------------------------------------------- CLI
def resume_command(sweep_dir: str | Path, extra: Sequence[str] = ()) -> list[str]:
    """``python -m vvm -m <the sweep's overrides> resume=true hydra.sweep.dir=<sweep_dir>``, from multirun.yaml."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        raise InputError(
            f"{path} not found: {sweep_dir} is not a Hydra sweep directory: give one (multirun/<date>/<time>)"
        )
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(path).hydra.overrides)
        task, hydra_ov = list(overrides["task"]), list(overrides["hydra"])
    except Exception as e:  # noqa: BLE001 - not YAML, a list where the mapping goes, keys missing
        raise InputError(
            f"{path} is not the multirun.yaml Hydra writes ({type(e).__name__}: {e}): rerun the sweep's own "
            "command with resume=true hydra.sweep.dir=" + str(sweep_dir)
        ) from None
    task = [str(o) for o in task if not str(o).startswith("resume=")]
    hydra_ov = [str(o) for o in hydra_ov if not str(o).startswith(("hydra.sweep.dir=", "hydra.mode="))]
    return [
        sys.executable,
        "-m",
        "vvm",
        "-m",
        *task,
        "resume=true",
        *hydra_ov,
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a directory or file it cannot use is one line on stderr, exit status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m vvm.sweep", description="Summarise or resume a vvm sweep."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_sum = sub.add_parser(
        "summary",
        help="(re)write summary.png/pdf/csv (and summary-<measure>.png/pdf, summary-<analysis>.png/pdf) of a sweep "
        "dir from its jobs' files",
    )
    p_sum.add_argument("sweep_dir")
    p_sum.add_argument("--no-wandb", action="store_true", help="do not log the summary to W&B")
    p_res = sub.add_parser(
        "resume", help="rerun a sweep with resume=true into its own dir (complete jobs are skipped)"
    )
    p_res.add_argument("sweep_dir")
    p_res.add_argument("overrides", nargs="*", help="extra overrides appended to the sweep's own")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if args.command == "summary":
            if not Path(args.sweep_dir).is_dir():
                raise InputError(
                    f"{args.sweep_dir} is not a directory: give a sweep directory (multirun/<date>/<time>)"
                )
            sweep_jobs(Path(args.sweep_dir))  # a sweep's directory: one that holds jobs
            out = write_summary(args.sweep_dir, log_wandb=not args.no_wandb)
            return 0 if out["jobs"] else 1
        cmd = resume_command(args.sweep_dir, args.overrides)
    except InputError as e:
        exit_with_error(f"{parser.prog} {args.command}", e)
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)
