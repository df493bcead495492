"""What the joint pass (:mod:`vvm.joint.joint_pass`) takes from the finished jobs' settings
(:class:`JointSettings`: the first job's, with the command line's overrides) and the notes on how the jobs'
own settings differ from it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vvm.sweep.records import JointJob

if TYPE_CHECKING:
    from vvm.settings import CKASettings, KernelSettings, MeasureSettings, SimilaritySettings

log = logging.getLogger(__name__)

# the settings the command line can set, by the flag that sets them (an error names the flag, not the key)
FLAGS = {"batch_size": "--batch-size", "max_samples": "--max-samples", "limit": "the jobs' dataset.limit"}


@dataclasses.dataclass(frozen=True)
class JointSettings:
    """What the joint pass takes from the jobs' settings (the first job's, with the command line's overrides): the
    data, the training batch size the datamodule is built with, the pass's settings (``similarity.*``), CKA's
    options (``cka.*``) and its kernel's (``kernel.*``), the measures' parameters (``measure.*``) and the data
    order's seed."""

    dataset: Any
    batch_size: int
    similarity: SimilaritySettings
    cka: CKASettings
    kernel: KernelSettings
    measure: MeasureSettings
    seed: int

    def engine_options(self) -> dict[str, Any]:
        """The engine's options (:func:`vvm.settings.engine_options`: ``cka.*``, ``kernel.<kernel>.*``, the
        pass's precision)."""
        from vvm.settings import engine_options

        return engine_options(self.cka, self.similarity, self.kernel)


def pass_settings(jobs: list[JointJob], overrides: dict[str, Any]) -> tuple[JointSettings, list[str]]:
    """The first job's settings with the command line's overrides, checked by the job's rules
    (:func:`vvm.settings.rules.check_rules`, errors naming the flags that set a value); a note when the jobs'
    data differ."""
    from vvm.settings import plain
    from vvm.settings.rules import check_rules

    first = jobs[0].settings
    notes = []
    differ = [j.job for j in jobs[1:] if plain(j.settings.dataset) != plain(first.dataset)]
    if differ:
        notes.append(
            f"jobs {', '.join(differ)} ran on other data settings; the joint pass uses job {jobs[0].job}'s"
        )
    own = {k: overrides[k] for k in ("batch_size", "max_samples", "layers") if overrides.get(k) is not None}
    seed = overrides.get("seed")
    job = dataclasses.replace(
        first,
        similarity=dataclasses.replace(first.similarity, **own),
        seed=first.seed if seed is None else int(seed),
    )
    check_rules(job, keys={f"similarity.{k}": flag for k, flag in FLAGS.items() if flag.startswith("--")})
    settings = JointSettings(
        dataset=job.dataset,
        batch_size=job.train.batch_size,
        similarity=job.similarity,
        cka=job.cka,
        kernel=job.kernel,
        measure=job.measure,
        seed=job.seed,
    )
    whose = "from --seed" if seed is not None else f"job {jobs[0].job}'s seed"
    return settings, notes + order_notes(jobs, settings, whose)


def order_notes(jobs: list[JointJob], settings: JointSettings, whose: str) -> list[str]:
    """Which data order the pass used (one seed for every model: the same batches for all), and for each job
    whose own map came from another order or batching, why its block differs from that map."""
    notes = [
        f"the data order (the examples in each batch, the same for every model) is seed {settings.seed} "
        f"({whose})"
    ]
    for j in jobs:
        why = [f"seed {j.settings.seed}"] if j.settings.seed != settings.seed else []
        for key in ("batch_size", "max_samples"):
            own, now = getattr(j.settings.similarity, key), getattr(settings.similarity, key)
            why += [f"similarity.{key}={own}, here {now}"] if own != now else []
        if why:
            notes.append(
                f"job {j.job} ({j.tag}): its own map came from {', '.join(why)}; its diagonal block here differs "
                "from that map by the sampling noise of other batches (the model is the same)"
            )
    return notes


def setting_notes(jobs: list[JointJob], measures: Sequence[str]) -> list[str]:
    """A note (and a warning) for every job whose measure settings (``measure.*``, kernel, estimator, precision:
    :meth:`vvm.cka.measures.Measure.comparable`) differ from the first job's, naming the key: the joint pass
    computes every model with the first job's, so the jobs' own maps are not what it compares."""
    from vvm.settings import job_measures

    def facts(job: JointJob) -> dict[str, Any]:
        built = job_measures(list(measures), job.settings.measure, job.settings.engine_options())
        return {k: v for m in built.values() for k, v in m.comparable().items()}

    first, notes = facts(jobs[0]), []
    for job in jobs[1:]:
        diff = [f"{k} ({v} vs {first.get(k)})" for k, v in facts(job).items() if first.get(k) != v]
        if diff:
            notes.append(
                f"job {job.job} was run with other settings than job {jobs[0].job}: {', '.join(diff)}; the joint "
                f"pass computes every model with job {jobs[0].job}'s"
            )
            log.warning("joint CKA: %s", notes[-1])
    return notes


__all__ = ["JointSettings", "order_notes", "pass_settings", "setting_notes"]
