"""One job: settings -> model + data -> weights (training when the init asks for it) -> CKA pass -> analyses -> files
+ logger.

The CLI (``python -m vvm``, through :func:`vvm.job.task.run_job`), the sweep and the tests all go through :func:`run`,
which receives the job as typed objects (:class:`vvm.settings.JobSettings`), never a config.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vvm.callbacks.cka import SimilarityCallback
from vvm.cka.pools import declared_pool
from vvm.cka.result import mean_offdiagonal
from vvm.data import create_datamodule, dataset_name
from vvm.data.batches import exact_length
from vvm.io import is_rank_zero, quiet_third_party
from vvm.loggers.logger import build_logger, log_config
from vvm.models import from_settings
from vvm.models.base import VisionModel
from vvm.pipeline.preflight import check_layers, check_plan, check_published, check_writable
from vvm.pipeline.report import close_job
from vvm.pipeline.weights import load_or_train, weights_source
from vvm.plots.style import job_title
from vvm.settings import ModelSettings, job_measures, measure_params, plain
from vvm.settings.job import InitSettings, JobSettings
from vvm.train.cache import CheckpointCache
from vvm.train.fit import Fit, planned_device, trainer_factory, vision_module

log = logging.getLogger(__name__)


def summarise(job: JobSettings) -> dict[str, Any]:
    return {
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


def axis_labels(summary: dict[str, Any]) -> tuple[str, str]:
    """Names for the heatmap's axes: the model names, with the inits where the names alone don't differ."""
    x = str(summary["model"])
    other = summary.get("compare")
    if not other:
        return x, x
    y = str(other["model"])
    if x == y:
        return f"{x} ({summary['init']})", f"{y} ({other['init']})"
    return x, y


def _title(summary: dict[str, Any], job: JobSettings, kind: str | None = None) -> str:
    """The figures' title from the job's facts: ``r18 (pretrained, digits, seed 0) - linear CKA``."""
    return f"{job_title(summary)} - {kind or f'{job.cka.kernel} CKA'}"


@dataclass
class Member:
    """One model of the job: built, with the settings it was built from and the init it gets."""

    model: VisionModel
    settings: ModelSettings
    init: InitSettings


@dataclass
class Models:
    """What a job measures: the model, and for cross-model CKA (``compare=...``) the second one."""

    first: Member
    second: Member | None = None

    @property
    def model(self) -> VisionModel:
        return self.first.model

    @property
    def other(self) -> VisionModel | None:
        return self.second.model if self.second is not None else None

    def members(self) -> list[Member]:
        return [self.first] + ([self.second] if self.second is not None else [])


def run(job: JobSettings, *, resume_command: str = "") -> dict[str, Any]:
    """Run one job and return what result.json holds. Writes into ``job.paths.output_dir``.

    Every setting was checked when the config was composed (:mod:`vvm.schema`); what needs the built job is
    checked before any weights (:mod:`vvm.pipeline.preflight`). An interrupt (Ctrl-C, SIGTERM) records status
    ``interrupted`` and ``resume_command`` (a training resumes from its last saved epoch)."""
    t_start = time.perf_counter()
    out_dir = Path(job.paths.output_dir)
    summary: dict[str, Any] = {**summarise(job), "status": "running", "output_dir": str(out_dir)}
    timings: dict[str, float] = {}
    logger = None
    try:
        with quiet_third_party(), sigterm_as_interrupt():
            check_writable(out_dir, "hydra.run.dir (the run directory, paths.output_dir)")
            pl.seed_everything(int(job.seed), workers=True, verbose=False)
            check_published(job)
            t = time.perf_counter()
            dm, models = build(job, summary)
            check_job(job, dm, models)
            timings["build"] = time.perf_counter() - t
            logger = build_logger(job.logger)
            if logger:  # the training recipe only when it made the weights (trained here or cached)
                trains = [weights_source(m.settings, m.init) == "trained" for m in models.members()]
                log_config(logger, plain(job), trained=any(trains))
            summary.update(weights_and_pass(job, dm, models, summary, timings, logger))
            if job.analyses and is_rank_zero():
                summary["analyses"] = analyse(job, dm, models.model, summary, timings, logger)
        summary["status"] = "ok"
        return summary
    except BaseException as e:
        interrupted = is_interrupt(e)
        summary["status"] = "interrupted" if interrupted else "failed"
        summary["error"] = (
            f"{type(e).__name__}: {e}" if not interrupted else "interrupted (Ctrl-C or SIGTERM)"
        )
        if interrupted:
            summary["resume"] = resume_command
            log.error("interrupted: resume with `%s`", resume_command)
        else:
            summary["traceback"] = traceback.format_exc()
        raise
    finally:
        timings["total"] = time.perf_counter() - t_start
        summary["seconds"] = timings
        summary["config"] = plain(job)
        close_job(out_dir, summary, logger)  # result.json, the logger finished, the report


def checkpoint_cache(job: JobSettings, settings: ModelSettings) -> CheckpointCache:
    """Where ``settings``' model trained with this job's recipe and data is cached."""
    return CheckpointCache.of(
        job.paths.checkpoints,
        settings,
        job.dataset,
        job.train,
        seed=job.seed,
        dataset_name=dataset_name(job.dataset),
    )


def weights_and_pass(
    job: JobSettings, dm: Any, models: Models, summary: dict[str, Any], timings: dict, logger: Any
) -> dict[str, Any]:
    """The weights (loaded or trained), then the similarity pass; returns the facts for result.json."""
    out_dir = Path(job.paths.output_dir)
    pass_cb = SimilarityCallback.from_settings(
        job.similarity,
        out_dir,
        engine=job.engine_options(),
        title=_title(summary, job),
        model_label=summary["model_x"],
        other=models.other,
        other_label=summary["model_y"],
        **measure_options(job, summary),
    )
    factory = trainer_factory(job.trainer)
    t = time.perf_counter()
    if models.second is not None:
        # the second model's weights first: CKA probes during the first model's training compare with it
        fit = Fit(job.train, factory, dm, seed=job.seed, output_dir=out_dir)
        summary["compare"].update(prepare_weights(job, dm, models.second, fit))
    fit = Fit(job.train, factory, dm, seed=job.seed, logger=logger, callbacks=[pass_cb], output_dir=out_dir)
    facts = prepare_weights(job, dm, models.first, fit)
    timings["weights"] = time.perf_counter() - t
    trainer = pass_trainer(factory, out_dir, pass_cb, logger)
    t = time.perf_counter()
    with exact_length():
        metrics = trainer.test(vision_module(models.model, job.train), datamodule=dm, verbose=False)
    timings["cka"] = time.perf_counter() - t
    if trainer.is_global_zero and pass_cb.final is not None:
        facts.update(result_facts(pass_cb.final, metrics))
    return facts


def analyse(
    job: JobSettings, dm: Any, model: VisionModel, summary: dict[str, Any], timings: dict, logger: Any
) -> dict[str, Any]:
    """The per-layer analyses (``analyses=[...]``) of the job's (first) model with its final weights, for the
    CKA pass's layers, into the run directory (rank 0 only: their images come from the batch plan, the same
    on every rank); returns the result.json entries, each analysis's seconds in ``timings``."""
    from vvm.analyses import run_analyses
    from vvm.loggers.logger import log_analyses

    model.to(planned_device(job.trainer.accelerator))  # Lightning leaves it on the CPU after the pass
    title = job_title(summary)
    entries = run_analyses(
        job.analyses,
        model,
        job.similarity.layer_spec(),
        dm,
        job.paths.output_dir,
        job.analysis,
        title=title,
        seed=job.seed,
    )
    for name, entry in entries.items():
        timings[name] = entry["seconds"]
        if entry.get("applies") is False:
            log.info("%s: %s", name, entry["note"])
    log_analyses(logger, entries)
    return entries


def prepare_weights(job: JobSettings, dm: Any, member: Member, fit: Fit) -> dict[str, Any]:
    """The weights of one model (:func:`vvm.pipeline.weights.load_or_train`); returns its facts."""
    return load_or_train(
        member.model,
        member.settings,
        member.init,
        dataset_name=dm.name,
        cache=checkpoint_cache(job, member.settings),
        fit=fit,
        keep_dir=job.paths.output_dir,
    )


def is_interrupt(e: BaseException) -> bool:
    """Ctrl-C (KeyboardInterrupt; Lightning turns one during a fit into SystemExit(1)) or SIGTERM."""
    return isinstance(e, (KeyboardInterrupt, SystemExit)) or type(e).__name__ == "SIGTERMException"


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


def build(job: JobSettings, summary: dict[str, Any]) -> tuple[Any, Models]:
    """The datamodule and the model(s), each told how the dataset normalises its images."""
    dm = build_datamodule(job)
    models = Models(Member(build_model(job.model, dm), job.model, job.init))
    summary["family"] = getattr(models.model, "family", None)
    if job.compare is not None:
        models.second = Member(build_model(job.compare, dm), job.compare, job.other_init())
        summary["compare"] = {"model": job.compare.name, "init": job.other_init().name.value}
    summary["model_x"], summary["model_y"] = axis_labels(summary)
    return dm, models


def build_datamodule(job: JobSettings) -> Any:
    """The job's datamodule: ``dataset.*``, the training batch size and the CKA pass's batching."""
    return create_datamodule(
        job.dataset,
        batch_size=job.train.batch_size,
        eval_batch_size=job.similarity.batch_size,
        max_samples=job.similarity.max_samples,
        shuffle=job.similarity.shuffle,
        seed=job.seed,
        pool_size=declared_pool(job_measures(job.measures, job.measure, job.engine_options()).values()),
    )


def build_model(settings: ModelSettings, dm: Any) -> VisionModel:
    model = from_settings(settings)
    model.set_data_normalization(dm.mean, dm.std)
    return model


def check_job(job: JobSettings, dm: Any, models: Models) -> None:
    """Models and data built, before any weights: layers, the batch plan, the checkpoint folder."""
    other = {}
    if models.other is not None:
        other = {"other": models.other.net, "other_layers": job.similarity.layer_spec(other=True)}
        check_layers(models.other, job.similarity.layer_spec(other=True), key="similarity.other_layers")
    check_layers(models.model, job.similarity.layer_spec(), **other)
    measures = job_measures(job.measures, job.measure, job.engine_options())
    check_plan(dm, job.similarity, job.cka.estimator.value, limit=job.dataset.limit, measures=measures)
    for member in models.members():
        if weights_source(member.settings, member.init) == "trained":
            size = sum(p.numel() * p.element_size() for p in member.model.net.parameters())
            # the final file, the resumable state (weights and momentum) and a temporary copy of each
            check_writable(job.paths.checkpoints, "paths.checkpoints", need_bytes=5 * size)


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


def measure_options(job: JobSettings, summary: dict[str, Any]) -> dict[str, Any]:
    """The CKA callback's measures (``measures=[...]``), their parameters and each one's heatmap title."""
    names = [str(m) for m in job.measures]
    built = job_measures(names, job.measure, job.engine_options())
    titles = {name: _title(summary, job, m.title) for name, m in built.items() if name != "cka"}
    return {"measures": names, "params": measure_params(job.measure, names), "titles": titles}


def measure_facts(final: dict[str, Any]) -> dict[str, Any]:
    """result.json's ``measures`` (each measure's mean off-diagonal value) and the files of those besides CKA."""
    results = final.get("results") or {}
    paths = final.get("measure_paths") or {}
    return {
        "measures": {name: mean_offdiagonal(res.matrix.numpy()) for name, res in results.items()},
        "measure_files": {n: {k: str(v) for k, v in p.items()} for n, p in paths.items() if n != "cka"},
    }


def result_facts(final: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What result.json records about the final CKA pass."""
    res = final["result"]
    if res is None:  # measures without cka: the layers and counts of the first measure
        res = next(iter(final["results"].values()))
        facts = result_facts({**final, "result": res}, metrics)
        return {**facts, "mean_cka": None, **measure_facts(final)}
    return {
        "n_samples": res.n_samples,
        "n_batches": res.n_batches,
        "n_layers": [len(res.layers_x), len(res.layers_y)],
        "layers_x": res.layers_x,
        "layers_y": res.layers_y,
        "undefined_layers": sorted(set(res.undefined_x + res.undefined_y)),
        "activation_dtype": res.activation_dtype,
        # similarity.tf32 and what the pass's float32 convolutions and matmuls ran in (ieee | tf32)
        "cka_float32": final.get("float32"),
        "mean_cka": mean_offdiagonal(res.matrix.numpy()),
        "test_accuracy": float(metrics[0]["test/acc"]) if metrics and "test/acc" in metrics[0] else None,
        "files": {k: str(v) for k, v in final.get("paths", {}).items()},
        **measure_facts(final),
    }


__all__ = [
    "Member",
    "Models",
    "analyse",
    "build",
    "build_datamodule",
    "build_model",
    "checkpoint_cache",
    "pass_trainer",
    "is_interrupt",
    "run",
    "summarise",
]
