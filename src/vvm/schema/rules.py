"""The rules that tie settings together, in one place beside the schema. Each number's own range is its field's
(:func:`vvm.settings.check_ranges`); what depends on two settings is here: a batch below the estimator's
minimum, no epochs for weights vvm must train, a model name that is not its node's, layer lists that are
neither a preset nor names, the probe's ridge grid. Whether a job trains is :func:`vvm.pipeline.weights.weights_source`'s decision alone."""

from __future__ import annotations

import math

from vvm.cka.functional import min_samples
from vvm.cka.pools import declared_pool
from vvm.models import registry
from vvm.settings import ConfigError, check_ranges, job_measures, measure_params
from vvm.settings.job import JobSettings


def _batches(job: JobSettings) -> list[str]:
    need = min_samples(job.cka.estimator.value)
    why = f"the {job.cka.estimator} estimator needs at least {need} examples per batch"
    out = []
    if job.similarity.batch_size < need:
        out.append(f"similarity.batch_size={job.similarity.batch_size}: {why}")
    if job.similarity.max_samples is not None and job.similarity.max_samples < need:
        out.append(f"similarity.max_samples={job.similarity.max_samples}: {why} (null: the whole split)")
    return out + _measure_batches(job)


def _measure_batches(job: JobSettings) -> list[str]:
    """Each measure besides CKA (whose minimum is the estimator's, above) against its pools (a pooled measure:
    ``measure.<name>.n``, one for every pooled measure of the pass) or the pass's batches: mutual kNN needs
    k < n."""
    names = [str(n) for n in job.measures]
    if len(set(names)) != len(names) or not names:
        return [f"measures={names}: name each measure once, at least one (e.g. measures=[cka,rsa,knn])"]
    try:
        measures = job_measures(names, job.measure, job.engine_options())
    except ValueError:
        return []  # a parameter out of its range: check_ranges names it
    try:
        declared_pool(measures.values())
    except ValueError as e:
        return [str(e)]
    out = []
    for name, m in measures.items():
        fix = f": raise it or change measure.{name}.*" if name in measure_params(job.measure, [name]) else ""
        if m.pooled:
            if m.params.n < m.min_n:
                out.append(
                    f"measure.{name}.n={m.params.n}: {m.min_reason} needs at least {m.min_n} examples per pool"
                )
            continue
        why = f"{m.min_reason} needs at least {m.min_n} examples per batch"
        for key in ("batch_size", "max_samples"):
            value = getattr(job.similarity, key)
            if name != "cka" and value is not None and value < m.min_n:
                out.append(f"similarity.{key}={value}: {why}{fix}")
    return out


def _layers(job: JobSettings) -> list[str]:
    out = []
    for key in ("layers", "other_layers"):
        spec = getattr(job.similarity, key)
        if spec is None and key == "other_layers":
            continue
        names = [spec] if isinstance(spec, str) else spec
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            out.append(
                f"similarity.{key}={spec!r}: a preset (blocks, all, term_project), a module name or glob, or a list "
                "of them"
            )
    return out


def _models(job: JobSettings) -> list[str]:
    from vvm.pipeline.weights import (
        weights_source,
    )  # here, not at the top: it imports Lightning, which --help never needs

    out = []
    pairs = [("model", job.model, "init", job.init)]
    if job.compare is not None:
        pairs.append(("compare", job.compare, "compare_init", job.other_init()))
    for key, model, init_key, init in pairs:
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
        if source == "trained" and job.train.epochs == 0:
            out.append(
                f"train.epochs=0 with {init_key}=pretrained: {model.name} is trained by vvm, and 0 epochs would "
                "save its random weights as trained ones; use train.epochs >= 1 (or init=random)"
            )
    return out


def _probe(job: JobSettings) -> list[str]:
    """The probe's ridge grid: positive strengths, and held-out examples to choose among several."""
    probe = job.analysis.probe
    ridges = list(probe.ridges)
    if not ridges or not all(math.isfinite(r) and r > 0 for r in ridges):
        return [f"analysis.probe.ridges={ridges}: a non-empty list of positive ridge strengths (relative)"]
    if probe.holdout == 0 and len(ridges) > 1:
        return [
            f"analysis.probe.holdout=0 with {len(ridges)} ridges: choosing a ridge needs held-out examples; "
            "use holdout > 0 (0.2) or a single ridge (analysis.probe.ridges=[1.0e-3])"
        ]
    return []


def rule_errors(job: JobSettings) -> list[str]:
    """Every broken range or rule of ``job``, each naming its full key."""
    return [*check_ranges(job), *_batches(job), *_layers(job), *_models(job), *_probe(job)]


def check_rules(job: JobSettings) -> JobSettings:
    """``job``, or a :class:`~vvm.settings.ConfigError` listing what is wrong with it."""
    errors = rule_errors(job)
    if errors:
        raise ConfigError("; ".join(errors))
    return job


__all__ = ["check_rules", "rule_errors"]
