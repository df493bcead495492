"""Checks that need the built job, before any weights or work: a bad setting is an error naming its key, before a
training that would be thrown away. (Keys, types, ranges and cross-field rules were checked when the config was
composed: :mod:`vvm.schema`.)

- :func:`check_writable`: the run directory (and, when a training is due, ``paths.checkpoints`` with room for
  the checkpoint) can be written;
- :func:`check_layers`: the layer names resolve, and run in a dry forward pass on the meta device;
- :func:`check_batch_plan`: the CKA pass's batch plan has at least one batch the estimator can use;
- :func:`check_published`: published weights (``init=pretrained`` on vit_l32 or a timm model) can be had, looked
  for before the (possibly 305M-parameter) network is built.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from vvm.cka.functional import min_samples
from vvm.io import InputError, writable_dir
from vvm.models import published_arch
from vvm.models.published import check_published_weights
from vvm.pipeline.weights import weights_source
from vvm.settings import ConfigError, ModelSettings, SimilaritySettings
from vvm.settings.job import InitSettings


def check_writable(path: str | Path, key: str, *, need_bytes: int = 0) -> Path:
    """Make ``path`` (a directory) if needed and write a file there; an error names ``key`` and the path.
    With ``need_bytes``, the file system must also have that much room (:func:`vvm.io.writable_dir`)."""
    try:
        return writable_dir(path, key, need_bytes=need_bytes)
    except InputError as e:
        raise ConfigError(str(e)) from None


def check_layers(model: Any, spec: Any, *, key: str = "similarity.layers", **other: Any) -> None:
    """``spec`` resolves on ``model`` (a :class:`vvm.models.base.VisionModel`), and every layer runs in a forward
    pass (a dry run on the meta device, where the network allows one)."""
    from vvm.cka import StreamingCKA
    from vvm.cka.presets import dry_run

    try:
        metric = StreamingCKA(model.net, spec, **other)
    except ValueError as e:
        raise ConfigError(f"{key}={spec!r}: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = dry_run(model.net, getattr(model, "input_size", None))
    if found is None:
        return
    calls, _ = found
    silent = [m for m in metric._modules_x if m not in calls]
    if silent:
        raise ConfigError(
            f"{key}: {', '.join(silent[:5])} never run in a forward pass of {model.name}, so they have no "
            "representation to compare: choose modules that run (or a preset: blocks, all, term_project)"
        )


def check_batch_plan(
    dm: Any,
    similarity: SimilaritySettings,
    estimator: str,
    *,
    limit: int | None = None,
    flags: dict[str, str] | None = None,
    measures: dict[str, Any] | None = None,
) -> None:
    """At least one batch of the pass (and of the probe, with ``similarity.every_n_epochs``) holds the estimator's
    minimum number of examples, and each of ``measures``' (:mod:`vvm.cka.measures`: kNN's k + 1). ``flags``
    names the settings in the error (the joint pass's are its own)."""
    names = {
        "batch_size": "similarity.batch_size",
        "max_samples": "similarity.max_samples",
        "limit": "dataset.limit",
    }
    names.update(flags or {})
    need = min_samples(estimator)
    plans = [("the CKA pass", dm.cka_batches())]
    if similarity.every_n_epochs > 0:
        plans.append(("the probe during training", dm.probe_batches()))
    for what, batches in plans:
        sizes = [len(b) for b in batches.cka_plan()]
        if not any(s >= need for s in sizes):
            raise ConfigError(
                f"{what} has {sum(sizes)} examples in batches of {sorted(set(sizes)) or [0]} "
                f"({names['batch_size']}={similarity.batch_size}, {names['max_samples']}={similarity.max_samples}, "
                f"{names['limit']}={limit}): the {estimator} estimator needs at least {need} examples per batch, "
                "so every batch would be skipped and nothing estimated; use more examples"
            )
        pools = [len(b) for b in batches.pools()]
        for name, m in (measures or {}).items():
            if name != "cka" and not any(s >= m.min_n for s in (pools if m.pooled else sizes)):
                what_n = (
                    f"measure.{name}.n={m.params.n}"
                    if m.pooled
                    else f"{names['batch_size']}={similarity.batch_size}"
                )
                raise ConfigError(
                    f"{what} has {'pools' if m.pooled else 'batches'} of {sorted(set(pools if m.pooled else sizes)) or [0]} "
                    f"examples ({what_n}): {m.min_reason} needs at least {m.min_n}, so measure {name} would skip "
                    f"every {'pool' if m.pooled else 'batch'}; use more examples or change measure.{name}.*"
                )


def check_published(members: list[tuple[ModelSettings, InitSettings]]) -> None:
    """Before any model is built: the published weights each ``(model, init)`` of ``members`` asks for are there
    (a file, timm's local cache, or a hub that answers within seconds); else the loader's error, in seconds
    instead of after building the network."""
    for settings, init in members:
        if weights_source(settings, init) == "published":
            check_published_weights(str(published_arch(settings)), init.weights_file)


__all__ = ["check_batch_plan", "check_layers", "check_published", "check_writable"]
