"""Sweeps (Hydra multiruns): the summary of a sweep directory, the Hydra callback that writes it, and the
rule that one failing job does not stop the others.

A sweep is ``python -m vvm -m ...``; each job writes ``result.json`` and ``cka.npz`` into its own subdirectory
of the sweep dir (``multirun/<date>/<time>/<job number>/``). When every job has returned,
:class:`SweepSummary` (registered under ``hydra.callbacks`` in conf/config.yaml, so it runs for any multirun)
reads those files back and writes, atomically, into the sweep dir:

- ``summary.png`` / ``summary.pdf``: every job's heatmap in one grid, one row per model family, the inits side
  by side, one colour scale [0, 1] (NaN grey); a failed job's panel shows its error;
- ``summary.csv``: one row per job (model, family, init, dataset, status, layers, samples, accuracy, mean CKA,
  seconds, error, ...);
- when the jobs logged to W&B: the grid and the table in a W&B run of the sweep's group (offline unless the
  jobs were online); a W&B failure is logged and never fails the sweep.

Failing jobs. Hydra's sweeper raises the first failed job's exception once a batch of jobs has returned, and then
``on_multirun_end`` never runs. So in multirun mode the entry point (:func:`run_job`) catches a job's exception
after :func:`vvm.pipeline.run` has recorded it in ``result.json`` (status ``failed``, the error and traceback),
logs it to the job's log and returns normally: the next job runs and the summary lists the failure. A single run
(no ``-m``) re-raises, so it still exits non-zero. Interrupts (Ctrl-C, SLURM's kill) are not caught. The sweep
itself exits 0 once its summary is written, unless ``hydra.callbacks.sweep_summary.fail_on_error=true``.

Resuming. ``resume=true`` with the same ``hydra.sweep.dir`` reruns the same jobs into the same subdirectories;
:func:`vvm.pipeline.run` skips a job whose directory already holds a complete result of the same config, and
the summary covers every job. ``python -m vvm.sweep resume DIR`` rebuilds that command from ``DIR/multirun.yaml``
and ``python -m vvm.sweep summary DIR`` rewrites the summary of a sweep directory (after a crash or a cancel).
Jobs are numbered in the order of the sweep, so a resume must sweep the same values (a job whose stored config
differs is computed again, with a warning naming the keys).

DDP. ``trainer=ddp`` in a local multirun: Lightning starts ranks 1.. by re-running the command line, which would
be the whole sweep; :func:`single_job_ddp_launch` makes it this job alone. Under ``hydra/launcher=slurm`` SLURM
starts one task per GPU and Lightning reads the ranks from SLURM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FAMILY_ORDER = ("resnet", "lambda", "vit")
MODEL_ORDER = ("r18", "r34", "r50", "lambda_r26", "lambda_r38", "lambda_r50", "vit_l32")
INIT_ORDER = ("pretrained", "random")
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
# overrides that say which job it is without being a "variant" of the sweep
_IDENTITY_KEYS = {"model", "init", "model.name", "init.name", "compare", "compare_init", "resume"}


def canonical_family(family: str | None, model: str | None = None) -> str:
    """The summary's row for a job: the model's own ``family`` (from result.json) folded onto the seed's three
    (``lambda_resnet`` -> ``lambda``), else derived from the model name (a job that failed before building it)."""
    f = (family or "").lower()
    for known in FAMILY_ORDER:
        if f == known or f.startswith(known):
            return known
    return f or model_family(model)


def model_family(name: str | None) -> str:
    """The family a model name belongs to: resnet (r18, resnet50), lambda (lambda_r26), vit (vit_l32), else other."""
    n = (name or "").lower()
    if re.fullmatch(r"(r|resnet)\d+[a-z0-9_]*", n):
        return "resnet"
    if n.startswith("lambda"):
        return "lambda"
    if n.startswith(("vit", "deit")):
        return "vit"
    return "other"


# ---------------------------------------------------------------------------------------------- job records
@dataclass
class JobRecord:
    """What one job left in its directory, read back from the files alone."""

    job: str
    output_dir: Path
    model: str | None = None
    family: str = "other"
    init: str | None = None
    compare: str | None = None  # cross-model CKA (compare=<model>): "<model> · <init>" of the columns
    dataset: str | None = None
    status: str = (
        "incomplete"  # ok | failed | incomplete (no result: killed, still running, or never finished)
    )
    error: str | None = None
    seconds: float | None = None
    samples: int | None = None
    accuracy: float | None = None
    mean_cka: float | None = None
    kernel: str | None = None
    overrides: list[str] = field(default_factory=list)
    variant: str = ""
    matrix: Any = None
    layers_x: list[str] = field(default_factory=list)
    layers_y: list[str] = field(default_factory=list)
    logger: dict[str, Any] | None = None  # the job's resolved logger config (W&B project, group, mode)

    @property
    def layers(self) -> int | str | None:
        if not self.layers_x:
            return None
        nx, ny = len(self.layers_x), len(self.layers_y)
        return nx if nx == ny else f"{nx}x{ny}"

    def row(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "model": self.model,
            "family": self.family,
            "init": self.init,
            "compare": self.compare,
            "dataset": self.dataset,
            "variant": self.variant,
            "status": self.status,
            "layers": self.layers,
            "samples": self.samples,
            "accuracy": self.accuracy,
            "mean_cka": self.mean_cka,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "error": " ".join(self.error.split()) if self.error else None,  # one line per job
            "output_dir": str(self.output_dir),
        }


def _job_sort_key(rel: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(rel).parts)


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a sweep: those holding Hydra's ``.hydra/`` record or a ``result.json``."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent for p in sweep_dir.glob("**/.hydra") if p.is_dir()}
    found |= {p.parent for p in sweep_dir.glob("**/result.json")}
    found = {d for d in found if d != sweep_dir and ".submitit" not in d.relative_to(sweep_dir).parts}
    return sorted(found, key=lambda d: _job_sort_key(str(d.relative_to(sweep_dir))))


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return None


def read_job(sweep_dir: str | Path, job_dir: str | Path) -> JobRecord:
    """One job's record from its files: result.json and cka.npz, else Hydra's ``.hydra/`` files."""
    from vvm.io import load_json, load_npz

    job_dir = Path(job_dir)
    rec = JobRecord(job=str(job_dir.relative_to(sweep_dir)), output_dir=job_dir)
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    rec.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []

    # what the job was, from Hydra's record (there even when the job died before writing anything)
    hydra_cfg = _read_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
    choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    task_cfg = _read_yaml(job_dir / ".hydra" / "config.yaml") or {}
    rec.model = _literal((task_cfg.get("model") or {}).get("name")) or choices.get("model")
    rec.init = _literal((task_cfg.get("init") or {}).get("name")) or choices.get("init")
    rec.dataset = choices.get("dataset")

    result: dict[str, Any] | None = None
    res_path = job_dir / "result.json"
    if res_path.is_file():
        try:
            result = load_json(res_path)
        except ValueError as e:
            rec.error = f"result.json is unreadable: {e}"
    elif rec.error is None:
        rec.error = "no result.json: the job was killed, is still running, or never started its pipeline"

    if result is not None:
        rec.model = result.get("model") or rec.model
        rec.init = result.get("init") or rec.init
        rec.dataset = result.get("dataset") or rec.dataset
        rec.status = str(result.get("status") or "incomplete")
        rec.error = result.get("error")
        secs = result.get("seconds")
        rec.seconds = secs.get("total") if isinstance(secs, dict) else secs
        rec.samples = result.get("n_samples")
        rec.accuracy = result.get("test_accuracy")
        mean = result.get("mean_cka")
        rec.mean_cka = None if mean is None or (isinstance(mean, float) and math.isnan(mean)) else mean
        rec.kernel = result.get("kernel")
        other = result.get("compare")
        if isinstance(other, dict):
            rec.compare = f"{other.get('model')} · {other.get('init')}"
        cfg = result.get("config") or {}
        rec.logger = cfg.get("logger") if isinstance(cfg.get("logger"), dict) else None
        rec.family = canonical_family(result.get("family"), rec.model)
        if rec.status == "running":
            rec.status, rec.error = "incomplete", rec.error or "result.json says the job is still running"
    else:
        rec.family = model_family(rec.model)
        if task_cfg.get("logger"):
            rec.logger = task_cfg.get("logger")

    if rec.status == "ok":
        npz_path = job_dir / "cka.npz"
        try:
            z = load_npz(npz_path)
            rec.matrix = z["cka"]
            rec.layers_x = [str(s) for s in z["layers_x"]]
            rec.layers_y = [str(s) for s in z["layers_y"]]
            if rec.samples is None and "n_samples" in z:
                rec.samples = int(z["n_samples"])
        except (OSError, KeyError, ValueError) as e:
            rec.status = "incomplete"
            rec.error = f"cka.npz is missing or unreadable: {type(e).__name__}: {e}"
    return rec


def _literal(v: Any) -> str | None:
    """A config value as written, unless it is an interpolation (then the caller falls back)."""
    return None if v is None or (isinstance(v, str) and "${" in v) else str(v)


def _override_items(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def collect_jobs(sweep_dir: str | Path) -> list[JobRecord]:
    """Every job of a sweep directory, in job order, with ``variant`` naming the swept values that are not the
    model or the init (say ``dataset=digits`` when the sweep also sweeps datasets)."""
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(sweep_dir, d) for d in job_dirs(sweep_dir)]
    items = [_override_items(j.overrides) for j in jobs]
    keys = sorted({k for it in items for k in it} - _IDENTITY_KEYS)
    varying = [k for k in keys if len({it.get(k) for it in items}) > 1]
    for j, it in zip(jobs, items):
        j.variant = ", ".join(f"{k}={it[k]}" for k in varying if k in it)
    return jobs


# ---------------------------------------------------------------------------------------------- the summary
def _order(value: str | None, known: Sequence[str]) -> tuple[int, str]:
    return (known.index(value), "") if value in known else (len(known), str(value))


def grid_rows(jobs: Sequence[JobRecord]) -> list[tuple[str, list[Any]]]:
    """The figure's rows: one per family (and variant), panels ordered by model, then init."""
    from vvm.plots.summary import Panel

    groups: dict[tuple[str, str], list[JobRecord]] = {}
    for j in jobs:
        groups.setdefault((j.family, j.variant), []).append(j)
    rows = []
    for family, variant in sorted(groups, key=lambda k: (_order(k[0], FAMILY_ORDER), k[1])):
        members = sorted(
            groups[(family, variant)],
            key=lambda j: (_order(j.model, MODEL_ORDER), _order(j.init, INIT_ORDER), _job_sort_key(j.job)),
        )
        panels = []
        for j in members:
            sub = []
            if j.mean_cka is not None:
                sub.append(f"mean CKA {j.mean_cka:.2f}")
            if j.accuracy is not None:
                sub.append(f"acc {100 * j.accuracy:.0f}%")
            note = None
            if j.status != "ok" or j.matrix is None:
                note = f"{j.status}: {j.error or 'no CKA matrix'}"
            panels.append(
                Panel(
                    title=f"{j.model} · {j.init}" + (f" vs {j.compare}" if j.compare else ""),
                    matrix=j.matrix,
                    layers_x=j.layers_x,
                    layers_y=j.layers_y,
                    subtitle=" · ".join(sub) or None,
                    note=note,
                )
            )
        rows.append((family if not variant else f"{family}\n{variant}", panels))
    return rows


def summary_title(jobs: Sequence[JobRecord], sweep_dir: Path) -> str:
    def one(values: set) -> str | None:
        values.discard(None)
        return str(next(iter(values))) if len(values) == 1 else None

    kernel, dataset = one({j.kernel for j in jobs}), one({j.dataset for j in jobs})
    samples = one({j.samples for j in jobs})
    n_ok = sum(j.status == "ok" for j in jobs)
    parts = [f"{kernel or ''} CKA".strip()]
    if dataset:
        parts.append(f"on {dataset}")
    if samples:
        parts.append(f"({samples} examples)")
    return f"{' '.join(parts)} - {n_ok}/{len(jobs)} jobs ok - {sweep_name(sweep_dir)}"


def sweep_name(sweep_dir: str | Path) -> str:
    """``multirun/2026-01-02/03-04-05`` -> ``2026-01-02_03-04-05`` (the last two path parts)."""
    parts = Path(sweep_dir).resolve().parts
    return "_".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def write_summary(
    sweep_dir: str | Path, *, wandb_group: str | None = None, log_wandb: bool = True
) -> dict[str, Any]:
    """Read every job of ``sweep_dir`` and write summary.csv, summary.png and summary.pdf there (atomically);
    log them to W&B when the jobs used W&B. Returns ``{"jobs": [...], "files": {...}, "failed": [...]}``."""
    import pandas as pd

    from vvm.io import write_bytes
    from vvm.plots.heatmap import save_figure
    from vvm.plots.summary import summary_figure

    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        log.warning("sweep summary: no job directories in %s", sweep_dir)
        return {"jobs": [], "files": {}, "failed": []}
    # object dtype: integer columns stay integers next to missing values (a failed job has no layer count)
    df = pd.DataFrame([j.row() for j in jobs], columns=list(SUMMARY_COLUMNS), dtype=object)
    files = {"csv": write_bytes(sweep_dir / "summary.csv", df.to_csv(index=False).encode())}
    fig = summary_figure(grid_rows(jobs), title=summary_title(jobs, sweep_dir))
    files["png"], files["pdf"] = save_figure(fig, sweep_dir / "summary")
    failed = [j for j in jobs if j.status != "ok"]
    log.info("sweep summary: %d/%d jobs ok -> %s", len(jobs) - len(failed), len(jobs), files["png"])
    for j in failed:
        log.warning("sweep summary: job %s (%s, %s) %s: %s", j.job, j.model, j.init, j.status, j.error)
    if log_wandb:
        files_logged = log_summary_to_wandb(sweep_dir, jobs, df, files["png"], group=wandb_group)
        if files_logged:
            files["wandb"] = files_logged
    return {"jobs": jobs, "files": files, "failed": failed}


def log_summary_to_wandb(
    sweep_dir: Path, jobs: Sequence[JobRecord], table: Any, image: Path, *, group: str | None = None
) -> Path | None:
    """Log the grid and the table to a W&B run of the sweep's group, when the jobs used W&B.

    Project, mode and group come from the jobs' logger configs: the jobs' group when they share one (say
    ``logger.group=my-study``), else ``sweep-<date>_<time>``. Mode: ``WANDB_MODE``, else the jobs' ``mode``,
    else offline. Never raises: W&B trouble is logged. Returns the W&B run directory, or None.
    """
    loggers = [
        j.logger for j in jobs if j.logger and str(j.logger.get("_target_", "")).endswith("WandbLogger")
    ]
    if not loggers:
        return None

    def shared(key: str) -> str | None:
        vals = {
            str(lg.get(key)) for lg in loggers if lg.get(key) is not None and "${" not in str(lg.get(key))
        }
        return vals.pop() if len(vals) == 1 else None

    project = shared("project") or "vvm"
    group = group or shared("group") or f"sweep-{sweep_name(sweep_dir)}"
    mode = os.environ.get("WANDB_MODE") or shared("mode") or "offline"
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=project,
            group=group,
            job_type="sweep-summary",
            name=f"summary-{sweep_name(sweep_dir)}",
            dir=str(sweep_dir),
            mode=mode,
            config={"sweep_dir": str(sweep_dir), "jobs": len(jobs)},
            reinit="finish_previous",
        )
        try:
            run.log(
                {
                    "summary/grid": wandb.Image(str(image)),
                    "summary/jobs": wandb.Table(dataframe=table.astype(str)),
                }
            )
            n_ok = sum(j.status == "ok" for j in jobs)
            run.summary.update({"jobs": len(jobs), "jobs_ok": n_ok, "jobs_failed": len(jobs) - n_ok})
            run_dir = Path(run.dir).parent
        finally:
            run.finish()
        log.info("sweep summary: logged to W&B (%s, project %s, group %s)", mode, project, group)
        return run_dir
    except Exception as e:  # W&B must never fail the sweep
        log.warning(
            "sweep summary: could not log to W&B (%s: %s); the summary files are written", type(e).__name__, e
        )
        return None


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


# ---------------------------------------------------------------------------------------------- the job side
def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def record_job_failure(exc: BaseException) -> None:
    """Log a multirun job's failure; write a minimal failed result.json when the pipeline could not write one."""
    import traceback

    from hydra.core.hydra_config import HydraConfig

    from vvm.io import write_json

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    log.error(
        "job failed, the sweep goes on (recorded in %s): %s: %s\n%s",
        out_dir / "result.json",
        type(exc).__name__,
        exc,
        "".join(traceback.format_exception(exc)),
    )
    if not (out_dir / "result.json").is_file():
        choices = HydraConfig.get().runtime.choices
        write_json(
            out_dir / "result.json",
            {
                "model": choices.get("model"),
                "init": choices.get("init"),
                "dataset": choices.get("dataset"),
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
                "output_dir": str(out_dir),
            },
        )


_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def single_job_ddp_launch() -> Iterator[None]:
    """Make Lightning's DDP launcher start this job's ranks, not the whole sweep again (multirun jobs only).

    Lightning starts ranks 1.. by re-running ``sys.argv`` with ``hydra.run.dir=<HydraConfig's run.dir>``; in a
    multirun that command is the sweep itself, so every rank would run every job (and its own summary). While the
    job runs, ``sys.argv`` is this job's own overrides (a single run) and ``run.dir`` its output dir. Afterwards
    the DDP state this process set up (process group, LOCAL_RANK, MASTER_PORT, ...) is cleared, so the next job
    starts fresh ranks. Processes started by a cluster (SLURM tasks, torchrun) are left alone.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    if "LOCAL_RANK" in os.environ or not HydraConfig.initialized():
        yield
        return
    hc = HydraConfig.get()
    argv, run_dir = list(sys.argv), hc.run.dir
    sys.argv = [argv[0], *[str(o) for o in hc.overrides.task]]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc):
            hc.run.dir = run_dir
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k in _DDP_ENV:
            os.environ.pop(k, None)


def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    """The Hydra task: :func:`vvm.pipeline.run`; in a multirun a failure is recorded and the sweep goes on."""
    from vvm.pipeline import run

    if not in_multirun():
        return run(cfg)
    try:
        with single_job_ddp_launch():
            return run(cfg)
    except Exception as e:
        record_job_failure(e)
        return None


# ---------------------------------------------------------------------------------------------- CLI
def resume_command(sweep_dir: str | Path, extra: Sequence[str] = ()) -> list[str]:
    """``python -m vvm -m <the sweep's overrides> resume=true hydra.sweep.dir=<sweep_dir>``, from multirun.yaml."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {sweep_dir} is not a Hydra sweep directory (multirun/<date>/<time>)"
        )
    cfg = OmegaConf.load(path)
    task = [str(o) for o in cfg.hydra.overrides.task if not str(o).startswith("resume=")]
    hydra_ov = [
        str(o)
        for o in cfg.hydra.overrides.hydra
        if not str(o).startswith(("hydra.sweep.dir=", "hydra.mode="))
    ]
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
    parser = argparse.ArgumentParser(
        prog="python -m vvm.sweep", description="Summarise or resume a vvm sweep."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_sum = sub.add_parser(
        "summary", help="(re)write summary.png/pdf/csv of a sweep dir from its jobs' files"
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
    if args.command == "summary":
        if not Path(args.sweep_dir).is_dir():
            parser.error(f"{args.sweep_dir} is not a directory")
        out = write_summary(args.sweep_dir, log_wandb=not args.no_wandb)
        return 0 if out["jobs"] else 1
    cmd = resume_command(args.sweep_dir, args.overrides)
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
