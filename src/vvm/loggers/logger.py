"""Experiment loggers: building one from its settings, logging a CKA result to it, finishing it.

``logger=wandb`` (the default), ``logger=csv`` (Lightning's CSVLogger in the run directory) or ``logger=none``.
W&B's mode (:mod:`vvm.loggers.wandb_run`): ``logger.mode=auto`` (the default) is online when this machine is logged in to
W&B and W&B answers within seconds, offline otherwise (no account needed: an offline run is a folder
``<run dir>/wandb/offline-run-*`` that ``wandb sync`` uploads later). Project, group (in a sweep the sweep's
``sweep-<date>_<time>``, else the job's ``tag``), job type (the tag), run name and tags come from
src/vvm/conf/logger/wandb.yaml.

What reaches W&B: the job's settings once (the run's config; without the training recipe when nothing was
trained); at every CKA pass (each ``similarity.every_n_epochs`` probe during training, plotted against ``epoch``, and the
final pass) the heatmap image (one key per stage, so the step slider shows the representations forming), the
matrix as a table with layer names and standard errors, and the mean off-diagonal CKA; Lightning's loss and
accuracy curves; the per-layer analyses' figures and a few of their numbers (``analyses/*``, a CSV logger gets the
numbers only); at the end, summary scalars (status, mean CKA, accuracies) and the result files as an artifact.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from vvm.cka.measures import MEASURES
from vvm.cka.result import mean_offdiagonal
from vvm.io import host_reachable, is_rank_zero
from vvm.loggers.wandb_run import (
    ModeChoice,
    base_url,
    choose_mode,
    define_epoch_metrics,
    log_result_files,
    run_facts,
)
from vvm.settings import CSVSettings, WandbSettings

SUMMARY_KEYS = (
    "status",
    "mean_cka",
    "test_accuracy",
    "train_accuracy",
    "val_accuracy",
    "n_samples",
    "trained",
    "train_seconds",
    "error",
)


def wandb_mode(settings: WandbSettings | None) -> str:
    """The mode a W&B run of ``settings`` starts in (:func:`vvm.loggers.wandb_run.choose_mode`: ``logger.mode``, else
    ``$WANDB_MODE``, else ``auto``: online when logged in and W&B answers, offline otherwise)."""
    return choose_mode(settings.mode if settings is not None else None).mode


def build_logger(settings: WandbSettings | CSVSettings | None) -> Any:
    """``logger=none`` -> ``False`` (Lightning's "no logger"); else Lightning's WandbLogger or CSVLogger. A W&B
    logger starts in the mode :func:`vvm.loggers.wandb_run.choose_mode` picks (``logger.vvm_mode`` says which and why,
    for the job's report)."""
    if settings is None:
        return False
    if isinstance(settings, CSVSettings):
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=settings.save_dir, name=settings.name)
    Path(settings.save_dir).mkdir(parents=True, exist_ok=True)
    choice = choose_mode(settings.mode)
    if choice.mode == "online":
        logger, choice = online_or_offline(settings, choice)
    else:
        logger = wandb_logger(settings, choice.mode)
    logger.vvm_mode = choice
    return logger


# per-epoch values, plotted against `epoch` (completed training epochs): Lightning's validation and epoch-end
# training values, and every measure's passes during training (`<measure>_probe/`)
EPOCH_PREFIXES = ["val", "train", *[f"{m}_probe" for m in MEASURES]]


def wandb_logger(settings: WandbSettings, mode: str, **extra: Any) -> Any:
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(
        project=settings.project,
        group=settings.group,
        name=settings.name,
        tags=list(settings.tags),
        job_type=settings.job_type,
        save_dir=settings.save_dir,
        log_model=settings.log_model,
        mode=mode,
        **extra,
    )
    # Lightning passes `anonymous=None` to wandb.init, which W&B answers with a deprecation warning that no vvm
    # user can act on: leave the argument out (its default is the same)
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


WANDB_INIT_TIMEOUT_S = 10.0  # how long an online run may take to start before vvm logs offline instead


def online_or_offline(settings: WandbSettings, choice: ModeChoice) -> tuple[Any, ModeChoice]:
    """An online W&B logger whose run has started, or, when W&B cannot be reached within a few seconds (no
    network, a firewall), an offline one, with a warning that names ``wandb sync``."""
    import wandb

    base = base_url()
    why = None
    if not host_reachable(base, timeout=5.0):
        why = f"{base} cannot be reached"
    else:
        try:
            logger = wandb_logger(
                settings, "online", settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S)
            )
            _ = logger.experiment  # starts the run now, within the timeout
            return logger, choice
        except Exception as e:  # noqa: BLE001 - any failure to start online: log offline
            why = f"the online run did not start ({type(e).__name__}: {e})"
    warnings.warn(
        f"W&B: {why}; logging offline instead: upload later with "
        f"`wandb sync {settings.save_dir}/wandb/offline-run-*`",
        stacklevel=2,
    )
    return wandb_logger(settings, "offline"), ModeChoice("offline", f"online was asked for but {why}")


def is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def log_config(logger: Any, config: dict[str, Any], *, trained: bool = True) -> None:
    """The job's settings (plain values) as the logger's hyperparameters (W&B: the run's config), once: the
    LightningModule does not log its own flat copy (:class:`vvm.train.module.VisionModule`). ``trained``
    False (random, published or a given checkpoint's weights): without the training recipe (``train``), which
    did not make these weights. A W&B run also plots its per-epoch values against ``epoch`` from here on."""
    if logger is False or logger is None or not is_rank_zero():
        return  # under DDP only rank 0 logs (W&B's experiment elsewhere is a stand-in)
    logger.log_hyperparams(config if trained else {k: v for k, v in config.items() if k != "train"})
    if is_wandb(logger):
        define_epoch_metrics(logger.experiment, EPOCH_PREFIXES)  # the run has started: plot per epoch


def cka_table_rows(res: Any) -> list[list[Any]]:
    """One row per layer pair: ``layer_x, layer_y, i, j, cka, stderr``; undefined values are None (an empty
    cell: the table file stays valid JSON)."""
    m, se = res.matrix.numpy(), res.stderr.numpy()

    def num(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    return [
        [lx, ly, i, j, num(m[i, j]), num(se[i, j])]
        for i, lx in enumerate(res.layers_x)
        for j, ly in enumerate(res.layers_y)
    ]


TABLE_COLUMNS = ["layer_x", "layer_y", "i", "j", "cka", "stderr"]


def log_cka(
    logger: Any, res: Any, *, stage: str, image: str | Path | None, step: int, epoch: int | None = None
) -> None:
    """Heatmap image, the matrix as a table (one row per pair, with layer names and standard error), and
    summary scalars, under ``cka/`` for the final pass and ``cka_<stage>/`` for the others (``cka_probe/``:
    the passes during training, at ``epoch``), through the logger's own methods."""
    log_measure(logger, res, measure="cka", stage=stage, image=image, step=step, epoch=epoch)


def log_measure(
    logger: Any,
    res: Any,
    *,
    measure: str,
    stage: str,
    image: str | Path | None,
    step: int,
    epoch: int | None = None,
) -> None:
    """:func:`log_cka` for any similarity measure (``cka``, ``rsa``, ``knn``): under ``<measure>/`` for the final
    pass and ``<measure>_<stage>/`` for the others; the table's value column is named after the measure."""
    prefix = measure if stage == "final" else f"{measure}_{stage}"
    mean = mean_offdiagonal(res.matrix.numpy())
    scalars: dict[str, Any] = {f"{prefix}/mean_offdiag": mean, f"{prefix}/n_samples": res.n_samples}
    if epoch is not None:
        scalars["epoch"] = epoch
    logger.log_metrics(scalars, step=step)
    if not is_wandb(logger):
        return
    columns = [*TABLE_COLUMNS[:4], measure, TABLE_COLUMNS[5]]
    logger.log_table(f"{prefix}/table", columns=columns, data=cka_table_rows(res), step=step)
    if image is not None:
        when = f"epoch {epoch}" if epoch is not None else stage
        label = MEASURES[measure].label if measure in MEASURES else measure
        caption = f"{when}: mean off-diagonal {label} {mean:.3f}" if not math.isnan(mean) else when
        logger.log_image(f"{prefix}/heatmap", images=[str(image)], step=step, caption=[caption])


def analysis_scalars(entries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """A few numbers per analysis (result.json entries of :func:`vvm.analyses.run_analyses`), under
    ``analyses/<name>/``: its seconds, and what the analysis itself reports (:meth:`Analysis.scalars
    <vvm.analyses.registry.Analysis.scalars>`: the probe's best accuracy, the ERF radii of the last layer with a
    map, the attention distance averaged over blocks and heads, ...)."""
    from vvm.analyses import ANALYSES

    out: dict[str, float] = {}
    for name, e in entries.items():
        if "seconds" in e:
            out[f"analyses/{name}/seconds"] = float(e["seconds"])
        if name in ANALYSES and e.get("applies") is not False:
            out |= {f"analyses/{name}/{k}": v for k, v in ANALYSES.make(name).scalars(e).items()}
    return out


def log_analyses(logger: Any, entries: dict[str, dict[str, Any]]) -> None:
    """The per-layer analyses of a job: :func:`analysis_scalars` to any logger; to W&B also each figure as an
    image under ``analyses/<name>`` (an analysis that does not apply logs nothing but its seconds)."""
    if logger is False or logger is None or not is_rank_zero():
        return
    scalars = analysis_scalars(entries)
    if scalars:
        logger.log_metrics(scalars)
    if not is_wandb(logger):
        return
    for name, e in entries.items():
        png = (e.get("files") or {}).get("png")
        if png is not None:
            logger.log_image(f"analyses/{name}", images=[str(png)], caption=[name])


def finish_logger(logger: Any, summary: dict[str, Any], files: list[Path] | None = None) -> None:
    """Summary scalars and the result ``files`` (an artifact, :func:`vvm.loggers.wandb_run.log_result_files`), then close
    the logger: the W&B run ends with exit code 1 unless the job's status is ok (also after a failure); other
    loggers are finalised with the status."""
    status = str(summary.get("status", "ok"))
    if is_wandb(logger):
        if not is_rank_zero():
            return
        run = logger.experiment
        for k in SUMMARY_KEYS:
            v = summary.get(k)
            if v is not None:
                run.summary[k] = v
        if summary.get("train_epochs") is not None:  # Lightning's test pass logged its own epoch, 0
            run.summary["epoch"] = int(summary["train_epochs"])  # the epochs that made these weights
        for name, v in (summary.get("measures") or {}).items():  # each measure's mean off-diagonal value
            if name != "cka" and v is not None:
                run.summary[f"mean_{name}"] = v
        if files:
            meta = {k: summary.get(k) for k in ("tag", "model", "init", "dataset", "seed", "status")}
            log_result_files(
                run, f"{summary.get('tag') or 'job'}-s{summary.get('seed')}-results", files, meta
            )
        logger.finalize("success" if status == "ok" else "failed")
        run.finish(exit_code=0 if status == "ok" else 1)
    elif logger:
        logger.finalize("success" if status == "ok" else "failed")


def where_logged(logger: Any) -> dict[str, Any] | None:
    """Where a job's W&B run is (:func:`vvm.loggers.wandb_run.run_facts`) and why in that mode; None for other loggers
    (and on ranks other than 0)."""
    if not is_wandb(logger) or not is_rank_zero():
        return None
    choice = getattr(logger, "vvm_mode", None)
    if choice is not None and choice.mode == "disabled":
        return {"mode": "disabled", "why": choice.why}
    facts = run_facts(logger.experiment)
    return {**facts, "why": choice.why} if choice is not None else facts


def log_files_run(
    *,
    run_dir: str | Path,
    name: str,
    job_type: str,
    images: dict[str, str | Path],
    tables: dict[str, Any],
    project: str = "vvm",
    group: str | None = None,
    mode: str | None = None,
    config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> Path | None:
    """A W&B run of its own for files made outside a job (a sweep's joint CKA): ``images`` (key -> file) and
    ``tables`` (key -> pandas DataFrame), in ``run_dir``; in the mode :func:`vvm.loggers.wandb_run.choose_mode` makes of ``mode`` (else ``$WANDB_MODE``, else auto).
    Returns the W&B run directory; W&B trouble is an exception for the caller to report."""
    import wandb

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        group=group,
        job_type=job_type,
        name=name,
        dir=str(run_dir),
        mode=choose_mode(mode).mode,
        config=config or {},
        reinit="finish_previous",
    )
    try:
        payload: dict[str, Any] = {k: wandb.Image(str(v)) for k, v in images.items()}
        payload.update({k: wandb.Table(dataframe=t.astype(str)) for k, t in tables.items()})
        run.log(payload)
        run.summary.update(summary or {})
        return Path(run.dir).parent
    finally:
        run.finish()


__all__ = [
    "analysis_scalars",
    "build_logger",
    "cka_table_rows",
    "finish_logger",
    "is_wandb",
    "log_analyses",
    "log_cka",
    "log_config",
    "log_files_run",
    "log_measure",
    "online_or_offline",
    "wandb_mode",
    "where_logged",
]
