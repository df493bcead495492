"""One job: settings -> model + data -> weights (training when the init asks for it) -> CKA pass -> analyses -> files
+ logger.

The CLI (``python -m vvm``, through :func:`vvm.job.task.run_job`), the sweep and the tests all go through :func:`run`,
which receives the job as typed objects (:class:`vvm.settings.JobSettings`), never a config.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vvm.callbacks.cka import CKACallback
from vvm.cka.pools import declared_pool
from vvm.data import create_datamodule, dataset_name
from vvm.data.batches import exact_length
from vvm.io import is_rank_zero, quiet_third_party
from vvm.loggers.logger import build_logger, log_config
from vvm.models import from_settings
from vvm.models.base import VisionModel
from vvm.pipeline.facts import failure_facts, result_facts
from vvm.pipeline.preflight import check_batch_plan, check_layers, check_published, check_writable
from vvm.pipeline.report import close_job, wandb_facts
from vvm.pipeline.weights import load_or_train, weights_source
from vvm.plots.style import job_title
from vvm.settings import CKASettings, ModelSettings, TrainSettings, job_measures, measure_params, plain
from vvm.settings.job import InitSettings, JobSettings
from vvm.train.cache import CheckpointCache
from vvm.train.fit import Fit, planned_device, trainer_factory, vision_module

log = logging.getLogger(__name__)


def axis_labels(facts: dict[str, Any]) -> tuple[str, str]:
    """Names for the heatmap's axes: the model names, with the inits where the names alone don't differ."""
    x = str(facts["model"])
    other = facts.get("compare")
    if not other:
        return x, x
    y = str(other["model"])
    if x == y:
        return f"{x} ({facts['init']})", f"{y} ({other['init']})"
    return x, y


@dataclass
class Member:
    """One model of the job: built, with the settings it was built from, the init it gets and where its trained
    weights are cached (:func:`checkpoint_cache`)."""

    model: VisionModel
    settings: ModelSettings
    init: InitSettings
    cache: CheckpointCache

    @property
    def source(self) -> str:
        """Where its weights come from (:func:`vvm.pipeline.weights.weights_source`)."""
        return weights_source(self.settings, self.init)


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


@dataclass
class Job:
    """A job's objects, built once from its settings by :func:`build`; the steps (:func:`measure`,
    :func:`analyse`) take these and the few settings they name, never the whole :class:`JobSettings`."""

    dm: Any  # the datamodule (dataset.*, the pass's batching and pools)
    models: Models
    callback: CKACallback  # the similarity pass: its measures, titles and files
    trainers: Callable[..., pl.Trainer]  # the job's Trainer factory (trainer.*)
    logger: Any  # Lightning's logger, or False (logger=none)
    facts: dict[str, Any]  # what result.json says about the built job: family, compare, the axes' labels
    title: str  # the figures' title: ``r18 (pretrained, digits, seed 0)``
    train: TrainSettings
    seed: int
    output_dir: Path
    device: str  # where the analyses run (trainer.accelerator)


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
        "precision": job.cka.precision.value,
        "layers": plain(job.cka.layers),
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
            for facts in measure(built):  # each piece's facts as it finishes
                parts.append(facts)
            if job.analyses and is_rank_zero():
                parts.append(analyse(built, job.analyses, job.analysis, job.cka))
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


def checkpoint_cache(
    settings: ModelSettings, *, checkpoints: str, dataset: Any, train: TrainSettings, seed: int
) -> CheckpointCache:
    """Where ``settings``' model trained with the recipe ``train`` on ``dataset`` (and ``seed``) is cached, under
    ``checkpoints`` (``paths.checkpoints``)."""
    return CheckpointCache.of(
        checkpoints, settings, dataset, train, seed=seed, dataset_name=dataset_name(dataset)
    )


def measure(job: Job) -> Iterator[dict[str, Any]]:
    """The weights, then the similarity pass; yields the facts for result.json as each piece finishes (the
    second model's weights first: the pass's probes during the first model's training compare with it)."""
    t = time.perf_counter()
    if job.models.second is not None:
        fit = Fit(job.train, job.trainers, job.dm, seed=job.seed, output_dir=job.output_dir)
        yield {"compare": prepare_weights(job, job.models.second, fit)}
    cb = job.callback
    fit = Fit(job.train, job.trainers, job.dm, seed=job.seed, logger=job.logger, callbacks=[cb],
              output_dir=job.output_dir)  # fmt: skip
    yield {**prepare_weights(job, job.models.first, fit), "seconds": {"weights": time.perf_counter() - t}}
    trainer = cka_trainer(job.trainers, job.output_dir, cb, job.logger)
    t = time.perf_counter()
    with exact_length():
        metrics = trainer.test(vision_module(job.models.model, job.train), datamodule=job.dm, verbose=False)
    facts = result_facts(cb.final, metrics) if trainer.is_global_zero and cb.final is not None else {}
    yield {**facts, "seconds": {"cka": time.perf_counter() - t}}


def analyse(job: Job, names: list[Any], settings: Any, cka: CKASettings) -> dict[str, Any]:
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
        cka.layer_spec(),
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


def build(job: JobSettings, about: dict[str, Any]) -> Job:
    """The job's objects, once: the published weights looked for (:func:`check_published`), the datamodule and
    the model(s), each told how the dataset normalises its images, checked (:func:`check_job`), then the
    similarity pass's callback, the Trainer factory and the logger. ``about``: what :func:`run` says the job is
    (model, init, dataset, seed: the figures' title)."""
    check_published(
        [(job.model, job.init)] + ([(job.compare, job.other_init())] if job.compare is not None else [])
    )
    measures = job_measures(job.measures, job.measure, job.cka)
    dm = build_datamodule(
        job.dataset,
        job.cka,
        batch_size=job.train.batch_size,
        seed=job.seed,
        pool_size=declared_pool(measures.values()),
    )
    cache = functools.partial(
        checkpoint_cache,
        checkpoints=job.paths.checkpoints,
        dataset=job.dataset,
        train=job.train,
        seed=job.seed,
    )
    models = Models(Member(build_model(job.model, dm), job.model, job.init, cache(job.model)))
    facts: dict[str, Any] = {"family": getattr(models.model, "family", None)}
    if job.compare is not None:
        init = job.other_init()
        models.second = Member(build_model(job.compare, dm), job.compare, init, cache(job.compare))
        facts["compare"] = {"model": job.compare.name, "init": init.name.value}
    check_job(
        models, dm, job.cka, limit=job.dataset.limit, measures=measures, checkpoints=job.paths.checkpoints
    )
    head = job_title({**about, **facts})
    facts["model_x"], facts["model_y"] = axis_labels({**about, **facts})
    titles = {name: f"{head} - {m.title}" for name, m in measures.items() if name != "cka"}
    names = [str(m) for m in job.measures]
    callback = CKACallback.from_settings(
        job.cka, job.paths.output_dir, title=f"{head} - {job.cka.kernel} CKA", model_label=facts["model_x"],
        other=models.other, other_label=facts["model_y"], measures=names,
        params=measure_params(job.measure, names), titles=titles,
    )  # fmt: skip
    return Job(
        dm=dm, models=models, callback=callback, trainers=trainer_factory(job.trainer),
        logger=build_logger(job.logger), facts=facts, title=head, train=job.train, seed=job.seed,
        output_dir=Path(job.paths.output_dir), device=planned_device(job.trainer.accelerator),
    )  # fmt: skip


def build_datamodule(
    dataset: Any, cka: CKASettings, *, batch_size: int, seed: int, pool_size: int | None = None
) -> Any:
    """The job's datamodule: ``dataset.*``, the training batch size (``train.batch_size``), the similarity
    pass's batching (``cka.*``) and the pooled measures' pool size (:func:`vvm.cka.pools.declared_pool`)."""
    return create_datamodule(
        dataset,
        batch_size=batch_size,
        eval_batch_size=cka.batch_size,
        max_samples=cka.max_samples,
        shuffle=cka.shuffle,
        seed=seed,
        pool_size=pool_size,
    )


def build_model(settings: ModelSettings, dm: Any) -> VisionModel:
    model = from_settings(settings)
    model.set_data_normalization(dm.mean, dm.std)
    return model


def check_job(
    models: Models,
    dm: Any,
    cka: CKASettings,
    *,
    limit: int | None,
    measures: dict[str, Any],
    checkpoints: str,
) -> None:
    """Models and data built, before any weights: layers, the batch plan (``limit``: ``dataset.limit``, named
    in its error), room for a checkpoint under ``checkpoints`` (``paths.checkpoints``) when one is trained."""
    other = {}
    if models.other is not None:
        other = {"other": models.other.net, "other_layers": cka.layer_spec(other=True)}
        check_layers(models.other, cka.layer_spec(other=True), cka, key="cka.other_layers")
    check_layers(models.model, cka.layer_spec(), cka, **other)
    check_batch_plan(dm, cka, limit=limit, measures=measures)
    for member in models.members():
        if member.source == "trained":
            size = sum(p.numel() * p.element_size() for p in member.model.net.parameters())
            # the final file, the resumable state (weights and momentum) and a temporary copy of each
            check_writable(checkpoints, "paths.checkpoints", need_bytes=5 * size)


def cka_trainer(factory: Any, out_dir: Path, cka_cb: Any, logger: Any) -> pl.Trainer:
    """The Trainer of the CKA pass (``trainer.test``): the job's Trainer with the CKA callback and the logger."""
    # the datamodule's evaluation loaders deal whole batches to ranks themselves (vvm.data.batches)
    return factory(
        use_distributed_sampler=False,
        logger=logger if logger else False,
        callbacks=[cka_cb],
        default_root_dir=str(out_dir),
        enable_checkpointing=False,
    )


__all__ = [
    "Job",
    "Member",
    "Models",
    "analyse",
    "build",
    "build_datamodule",
    "build_model",
    "checkpoint_cache",
    "cka_trainer",
    "merge_facts",
    "run",
]
