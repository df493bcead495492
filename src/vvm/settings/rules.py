"""The rules that tie a job's settings together, in one place, run wherever a :class:`JobSettings` is made: when
the config is composed (:func:`vvm.schema.to_settings`), by the Python API (:func:`check_rules`) and by
``vvm.joint`` for its pass's settings. Each number's own range is its field's
(:func:`vvm.settings.check_ranges`); what depends on two settings is here: a batch below the estimator's
minimum, no epochs for weights vvm must train, a model name that is not its node's, layer lists that are
neither a preset nor names, the probe's ridge grid. Whether a job trains is :func:`vvm.pipeline.weights.weights_source`'s decision alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vvm.analyses import settings_problems
from vvm.cka.functional import min_samples
from vvm.cka.pools import declared_pool
from vvm.models import registry
from vvm.settings import ConfigError, SimilaritySettings, check_ranges, job_measures, measure_params
from vvm.settings.job import JobSettings


def _batches(similarity: SimilaritySettings, estimator: str) -> list[str]:
    need = min_samples(estimator)
    why = f"the {estimator} estimator needs at least {need} examples per batch"
    out = []
    if similarity.batch_size < need:
        out.append(f"similarity.batch_size={similarity.batch_size}: {why}")
    if similarity.max_samples is not None and similarity.max_samples < need:
        out.append(f"similarity.max_samples={similarity.max_samples}: {why} (null: the whole split)")
    return out


def _measure_batches(
    names: list[str], params: Any, similarity: SimilaritySettings, engine: dict[str, Any]
) -> list[str]:
    """Each measure besides CKA (whose minimum is the estimator's, above) against its pools (a pooled measure:
    ``measure.<name>.n``, one for every pooled measure of the pass) or the pass's batches: mutual kNN needs
    k < n."""
    if len(set(names)) != len(names) or not names:
        return [f"measures={names}: name each measure once, at least one (e.g. measures=[cka,rsa,knn])"]
    try:
        measures = job_measures(names, params, engine)
    except ValueError:
        return []  # a parameter out of its range: check_ranges names it
    try:
        declared_pool(measures.values())
    except ValueError as e:
        return [str(e)]
    out = []
    for name, m in measures.items():
        fix = f": raise it or change measure.{name}.*" if name in measure_params(params, [name]) else ""
        if m.pooled:
            if m.params.n < m.min_n:
                out.append(
                    f"measure.{name}.n={m.params.n}: {m.min_reason} needs at least {m.min_n} examples per pool"
                )
            continue
        why = f"{m.min_reason} needs at least {m.min_n} examples per batch"
        for key in ("batch_size", "max_samples"):
            value = getattr(similarity, key)
            if name != "cka" and value is not None and value < m.min_n:
                out.append(f"similarity.{key}={value}: {why}{fix}")
    return out


def _layers(similarity: SimilaritySettings) -> list[str]:
    out = []
    for key in ("layers", "other_layers"):
        spec = getattr(similarity, key)
        if spec is None and key == "other_layers":
            continue
        names = [spec] if isinstance(spec, str) else spec
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            out.append(
                f"similarity.{key}={spec!r}: a preset (blocks, all, term_project), a module name or glob, or a list "
                "of them"
            )
    return out


def _models(models: list[tuple[str, Any, str, Any]], epochs: int) -> list[str]:
    """``(key, model settings, init key, init settings)`` of each model: its name is its node's, its init can
    be met, and weights vvm trains get epochs."""
    from vvm.pipeline.weights import (
        weights_source,
    )  # here, not at the top: it imports Lightning, which --help never needs

    out = []
    for key, model, init_key, init in models:
        entry = registry()[type(model).entry]
        if not entry.named_by_arch and model.name != entry.name:
            out.append(
                f"{key}.name={model.name!r}: {key}={entry.name} builds {entry.name}; use {key}={model.name}"
            )
            continue
        try:
            source = weights_source(model, init)
        except ValueError as e:
            out.append(f"{init_key}: {e}")
            continue
        if source == "trained" and epochs == 0:
            out.append(
                f"train.epochs=0 with {init_key}=pretrained: {model.name} is trained by vvm, and 0 epochs would "
                "save its random weights as trained ones; use train.epochs >= 1 (or init=random)"
            )
    return out


def _logger(logger: Any) -> list[str]:
    """The logger's ``kind`` is its class's (result.json stores it: :func:`vvm.schema.from_record` reads it)."""
    own = type(logger)().kind if logger is not None else None
    if logger is None or logger.kind == own:
        return []
    return [
        f"logger.kind={logger.kind!r}: logger={own} configures {own}; choose the logger with logger=<kind>"
    ]


def rule_errors(job: JobSettings) -> list[str]:
    """Every broken range or rule of ``job``, each naming its full key."""
    models = [("model", job.model, "init", job.init)]
    if job.compare is not None:
        models.append(("compare", job.compare, "compare_init", job.other_init()))
    return [
        *check_ranges(job),
        *_batches(job.similarity, job.cka.estimator.value),
        *_measure_batches([str(n) for n in job.measures], job.measure, job.similarity, job.engine_options()),
        *_layers(job.similarity),
        *_models(models, job.train.epochs),
        *settings_problems(job.analysis),
        *_logger(job.logger),
    ]


def check_rules(job: JobSettings, *, keys: Mapping[str, str] | None = None) -> JobSettings:
    """``job``, or a :class:`~vvm.settings.ConfigError` listing what is wrong with it; ``keys`` names settings
    otherwise in the messages (``{"similarity.batch_size": "--batch-size"}``: a tool's own flags)."""
    errors = rule_errors(job)
    for key, name in (keys or {}).items():
        errors = [e.replace(f"{key}=", f"{name}=") for e in errors]
    if errors:
        raise ConfigError("; ".join(errors))
    return job


__all__ = ["check_rules", "rule_errors"]
