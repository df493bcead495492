"""One job: settings -> model + data -> weights (training when the init asks for it) -> CKA pass -> analyses -> files
+ logger. :func:`build` (:mod:`vvm.pipeline.objects`) makes the job's objects once; the steps take them and return
their facts, which :func:`run` merges into result.json's dict once.

The CLI (``python -m vvm``, through :func:`vvm.job.task.run_job`), the sweep and the tests all go through :func:`run`,
which receives the job as typed objects (:class:`vvm.settings.JobSettings`), never a config.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vvm.data import dataset_name
from vvm.data.batches import exact_length
from vvm.io import is_rank_zero, quiet_third_party
from vvm.loggers.logger import log_config
from vvm.pipeline.facts import failure_facts, result_facts
from vvm.pipeline.objects import Job, Member, build
from vvm.pipeline.preflight import check_writable
from vvm.pipeline.report import close_job, wandb_facts
from vvm.pipeline.weights import load_or_train
from vvm.settings import SimilaritySettings, plain
from vvm.settings.job import JobSettings
from vvm.train.fit import Fit, vision_module

log = logging.getLogger(__name__)


def run(job: JobSettings, *, resume_command: str = "") -> dict[str, Any]:
    """Run one job and return what result.json holds. Writes into ``job.paths.output_dir``.

    Every setting was checked when the config was composed (:mod:`vvm.schema`); what needs the built job is
    checked before any weights (:mod:`vvm.pipeline.preflight`). An interrupt (Ctrl-C, SIGTERM) records status
    ``interrupted`` and ``resume_command`` (a training resumes from its last saved epoch). Each step returns its
    facts; result.json is those merged once (:func:`merge_facts`), also after a failure: what finished is kept."""
    t_start = time.perf_counter()
    out_dir = Path(job.paths.output_dir)
    about = {  # what the job is, known before anything is built
        "tag": job.tag,
        "model": job.model.name,
        "init": job.init.name.value,
        "dataset": dataset_name(job.dataset),
        "seed": job.seed,
        "kernel": job.cka.kernel.value,
        "estimator": job.cka.estimator.value,
        "precision": job.similarity.precision.value,
        "layers": plain(job.similarity.layers),
    }
    parts: list[dict[str, Any]] = [{**about, "status": "running", "output_dir": str(out_dir)}]
    built = None
    try:
        with quiet_third_party(), sigterm_as_interrupt():
            check_writable(out_dir, "hydra.run.dir (the run directory, paths.output_dir)")
            pl.seed_everything(int(job.seed), workers=True, verbose=False)
            t = time.perf_counter()
            built = build(job, about)
            parts.append({**built.facts, "seconds": {"build": time.perf_counter() - t}})
            if built.logger:  # the training recipe only when it made the weights (trained here or cached)
                trains = [m.source == "trained" for m in built.models.members()]
                log_config(built.logger, plain(job), trained=any(trains))
            for facts in weights_and_pass(built):  # each piece's facts as it finishes
                parts.append(facts)
            if job.analyses and is_rank_zero():
                parts.append(analyse(built, job.analyses, job.analysis, job.similarity))
        parts.append({"status": "ok"})
    except BaseException as e:
        parts.append(failure_facts(e, resume_command))
        raise
    finally:
        logger = built.logger if built is not None else None
        parts.append({"seconds": {"total": time.perf_counter() - t_start}, "config": plain(job)})
        parts.append(wandb_facts(logger))
        summary = merge_facts(parts)
        close_job(out_dir, summary, logger)  # result.json, the logger finished, the report
    return summary


def merge_facts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """result.json's dict: the steps' facts in order, a later value replacing an earlier one, except that two
    dicts under one key (``seconds``, ``compare``) are merged."""
    summary: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            old = summary.get(key)
            summary[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return summary


def weights_and_pass(job: Job) -> Iterator[dict[str, Any]]:
    """The weights, then the similarity pass; yields the facts for result.json as each piece finishes (the
    second model's weights first: the pass's probes during the first model's training compare with it)."""
    t = time.perf_counter()
    if job.models.second is not None:
        fit = Fit(job.train, job.trainers, job.dm, seed=job.seed, output_dir=job.output_dir)
        yield {"compare": prepare_weights(job, job.models.second, fit)}
    cb = job.callback
    fit = Fit(
        job.train,
        job.trainers,
        job.dm,
        seed=job.seed,
        logger=job.logger,
        callbacks=[cb],
        output_dir=job.output_dir,
    )
    yield {**prepare_weights(job, job.models.first, fit), "seconds": {"weights": time.perf_counter() - t}}
    trainer = pass_trainer(job.trainers, job.output_dir, cb, job.logger)
    t = time.perf_counter()
    with exact_length():
        metrics = trainer.test(vision_module(job.models.model, job.train), datamodule=job.dm, verbose=False)
    facts = result_facts(cb.final, metrics) if trainer.is_global_zero and cb.final is not None else {}
    yield {**facts, "seconds": {"cka": time.perf_counter() - t}}


def analyse(job: Job, names: list[Any], settings: Any, similarity: SimilaritySettings) -> dict[str, Any]:
    """The per-layer analyses ``names`` (``analyses=[...]``, their parameters ``settings``: ``analysis.*``) of
    the job's (first) model with its final weights, for the pass's layers, into the run directory (rank 0 only:
    their images come from the batch plan, the same on every rank); returns the result.json facts: the entries
    and each analysis's seconds."""
    from vvm.analyses import run_analyses
    from vvm.loggers.logger import log_analyses

    model = job.models.model
    model.to(job.device)  # Lightning leaves it on the CPU after the pass
    entries = run_analyses(
        names,
        model,
        similarity.layer_spec(),
        job.dm,
        job.output_dir,
        settings,
        title=job.title,
        seed=job.seed,
    )
    for name, entry in entries.items():
        if entry.get("applies") is False:
            log.info("%s: %s", name, entry["note"])
    log_analyses(job.logger, entries)
    return {"analyses": entries, "seconds": {name: entry["seconds"] for name, entry in entries.items()}}


def prepare_weights(job: Job, member: Member, fit: Fit) -> dict[str, Any]:
    """The weights of one model (:func:`vvm.pipeline.weights.load_or_train`); returns its facts."""
    return load_or_train(
        member.model,
        member.settings,
        member.init,
        dataset_name=job.dm.name,
        cache=member.cache,
        fit=fit,
        keep_dir=job.output_dir,
    )


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the job runs, SIGTERM (SLURM's cancel, ``kill``) raises KeyboardInterrupt as Ctrl-C does, so the
    job records that it was interrupted instead of vanishing. Lightning's own handler runs first during a fit; a
    handler that was there before (:class:`vvm.job.slurm.SlurmLauncher`'s, which requeues a Slurm job) is called
    before the interrupt is raised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def pass_trainer(factory: Any, out_dir: Path, pass_cb: Any, logger: Any) -> pl.Trainer:
    """The Trainer of the CKA pass (``trainer.test``): the job's Trainer with the CKA callback and the logger."""
    # the datamodule's evaluation loaders deal whole batches to ranks themselves (vvm.data.batches)
    return factory(
        use_distributed_sampler=False,
        logger=logger if logger else False,
        callbacks=[pass_cb],
        default_root_dir=str(out_dir),
        enable_checkpointing=False,
    )


__all__ = [
    "analyse",
    "build",
    "merge_facts",
    "pass_trainer",
    "run",
    "weights_and_pass",
]
