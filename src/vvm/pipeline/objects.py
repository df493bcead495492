"""A job's objects: :func:`build` makes them once from the job's settings (the datamodule, the models with their
settings, inits and checkpoint caches, the similarity pass's callback, the Trainer factory, the logger, the display
facts and title) and returns them as a :class:`Job`, which the steps of :mod:`vvm.pipeline.steps` take."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vvm.callbacks.cka import SimilarityCallback
from vvm.cka.pools import declared_pool
from vvm.data import create_datamodule, dataset_name
from vvm.loggers.logger import build_logger
from vvm.models import from_settings
from vvm.models.base import VisionModel
from vvm.pipeline.preflight import check_batch_plan, check_layers, check_published, check_writable
from vvm.pipeline.weights import weights_source
from vvm.plots.style import job_title
from vvm.settings import ModelSettings, SimilaritySettings, TrainSettings, job_measures, measure_params
from vvm.settings.job import InitSettings, JobSettings
from vvm.train.cache import CheckpointCache
from vvm.train.fit import planned_device, trainer_factory


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
    """A job's objects, built once from its settings by :func:`build`; the steps
    (:func:`vvm.pipeline.steps.weights_and_pass`, :func:`vvm.pipeline.steps.analyse`) take these and the few settings they
    name, never the whole :class:`JobSettings`."""

    dm: Any  # the datamodule (dataset.*, the pass's batching and pools)
    models: Models
    callback: SimilarityCallback  # the similarity pass: its measures, titles and files
    trainers: Callable[..., pl.Trainer]  # the job's Trainer factory (trainer.*)
    logger: Any  # Lightning's logger, or False (logger=none)
    facts: dict[str, Any]  # what result.json says about the built job: family, compare, the axes' labels
    title: str  # the figures' title: ``r18 (pretrained, digits, seed 0)``
    train: TrainSettings  # the recipe (train.*): the Fit's and the pass's LightningModule's
    seed: int
    output_dir: Path
    device: Any  # where the analyses run (trainer.accelerator: a torch.device)


def build(job: JobSettings, about: dict[str, Any]) -> Job:
    """The job's objects, once: the published weights looked for (:func:`check_published`), the datamodule and
    the model(s), each told how the dataset normalises its images, checked (:func:`check_job`), then the
    similarity pass's callback, the Trainer factory and the logger. ``about``: what :func:`run` says the job is
    (model, init, dataset, seed: the figures' title)."""
    check_published(
        [(job.model, job.init)] + ([(job.compare, job.other_init())] if job.compare is not None else [])
    )
    measures = job_measures(job.measures, job.measure, job.engine_options())
    dm = build_datamodule(
        job.dataset,
        job.similarity,
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
    checks = {"limit": job.dataset.limit, "measures": measures, "checkpoints": job.paths.checkpoints}
    check_job(models, dm, job.similarity, job.cka.estimator.value, **checks)
    head = job_title({**about, **facts})
    facts["model_x"], facts["model_y"] = axis_labels({**about, **facts})
    titles = {name: f"{head} - {m.title}" for name, m in measures.items() if name != "cka"}
    names = [str(m) for m in job.measures]
    callback = SimilarityCallback.from_settings(
        job.similarity,
        job.paths.output_dir,
        engine=job.engine_options(),
        title=f"{head} - {job.cka.kernel} CKA",
        model_label=facts["model_x"],
        other=models.other,
        other_label=facts["model_y"],
        measures=names,
        params=measure_params(job.measure, names),
        titles=titles,
    )
    return Job(
        dm=dm,
        models=models,
        callback=callback,
        trainers=trainer_factory(job.trainer),
        logger=build_logger(job.logger),
        facts=facts,
        title=head,
        train=job.train,
        seed=job.seed,
        output_dir=Path(job.paths.output_dir),
        device=planned_device(job.trainer.accelerator),
    )


def build_datamodule(
    dataset: Any, similarity: SimilaritySettings, *, batch_size: int, seed: int, pool_size: int | None = None
) -> Any:
    """The job's datamodule: ``dataset.*``, the training batch size (``train.batch_size``), the similarity
    pass's batching (``similarity.*``) and the pooled measures' pool size (:func:`vvm.cka.pools.declared_pool`)."""
    return create_datamodule(
        dataset,
        batch_size=batch_size,
        eval_batch_size=similarity.batch_size,
        max_samples=similarity.max_samples,
        shuffle=similarity.shuffle,
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
    similarity: SimilaritySettings,
    estimator: str,
    *,
    limit: int | None,
    measures: dict[str, Any],
    checkpoints: str,
) -> None:
    """Models and data built, before any weights: layers, the batch plan (``estimator``: ``cka.estimator``;
    ``limit``: ``dataset.limit``, named in its error), room for a checkpoint under ``checkpoints`` (``paths.checkpoints``) when one is trained."""
    other = {}
    if models.other is not None:
        other = {"other": models.other.net, "other_layers": similarity.layer_spec(other=True)}
        check_layers(models.other, similarity.layer_spec(other=True), key="similarity.other_layers")
    check_layers(models.model, similarity.layer_spec(), **other)
    check_batch_plan(dm, similarity, estimator, limit=limit, measures=measures)
    for member in models.members():
        if member.source == "trained":
            size = sum(p.numel() * p.element_size() for p in member.model.net.parameters())
            # the final file, the resumable state (weights and momentum) and a temporary copy of each
            check_writable(checkpoints, "paths.checkpoints", need_bytes=5 * size)


def checkpoint_cache(
    settings: ModelSettings, *, checkpoints: str, dataset: Any, train: TrainSettings, seed: int
) -> CheckpointCache:
    """Where ``settings``' model trained with the recipe ``train`` on ``dataset`` (and ``seed``) is cached, under
    ``checkpoints`` (``paths.checkpoints``)."""
    return CheckpointCache.of(
        checkpoints, settings, dataset, train, seed=seed, dataset_name=dataset_name(dataset)
    )


__all__ = [
    "Job",
    "Member",
    "Models",
    "axis_labels",
    "build",
    "build_datamodule",
    "build_model",
    "check_job",
    "checkpoint_cache",
]
