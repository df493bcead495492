"""The weights a job measures: the one place that decides what ``init`` means for a model.

:func:`weights_source` decides, :func:`load_or_train` does it:

- ``random``: nothing to do, the seeded construction of :func:`vvm.models.create` is the initialisation.
- ``checkpoint``: ``init=pretrained`` with ``init.checkpoint``: load that file (any model), through
  :func:`vvm.models.checkpoints.load_checkpoint`.
- ``published``: ``init=pretrained`` on a model with published weights (``vit_l32``, ``timm``): those weights,
  from ``init.weights_file`` or the hub (:func:`vvm.models.published.load_timm_pretrained`); nothing trains.
- ``trained``: ``init=pretrained`` on a model vvm trains (r18 r34 r50 lambda_r*, see
  :func:`vvm.models.trained_by_vvm`): the cached checkpoint of this recipe (a
  :class:`vvm.train.cache.CheckpointCache`); when there is none, a :class:`vvm.train.fit.Fit` trains it with the
  term project's recipe, resuming from ``<key>.last.ckpt`` when an earlier training was interrupted, and the
  result is saved atomically. The trained model keeps its weights in memory. A caller that must never train
  (the joint pass) passes no ``fit``.

:func:`load_or_train` returns the facts that go into result.json: ``weights`` (a sentence), ``trained``,
``checkpoint``, and after a training (or from the cached file) ``train_accuracy``, ``val_accuracy``,
``train_epochs``, ``train_seconds``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vvm.io import remove_stale_temporaries
from vvm.models import published_arch, trained_by_vvm
from vvm.models.base import VisionModel
from vvm.models.checkpoints import CheckpointMismatchError, load_checkpoint, refused_objects
from vvm.models.published import load_timm_pretrained, published_source
from vvm.settings import ModelSettings
from vvm.settings.job import InitName, InitSettings
from vvm.train.cache import CheckpointCache, read_facts, save_trained

if TYPE_CHECKING:
    from vvm.train.fit import Fit

log = logging.getLogger(__name__)

INITS = tuple(m.value for m in InitName)
# what result.json repeats from a cached checkpoint's facts (the training that made it)
CACHED_FACTS = (
    "train_accuracy",
    "val_accuracy",
    "train_loss",
    "train_epochs",
    "train_seconds",
    "train_precision",
)


def weights_source(model: ModelSettings, init: InitSettings) -> str:
    """Where the weights ``init`` asks for come from for ``model``: ``random``, ``checkpoint``, ``published`` or
    ``trained`` (see the module docstring). Known before the model is built."""
    if init.name == InitName.random:
        return "random"
    if trained_by_vvm(model) and init.weights_file is not None:
        raise ValueError(
            f"init.weights_file is for timm models with published weights; {model.name} has none: pass the "
            "weights it was trained with as init.checkpoint"
        )
    if init.checkpoint is not None:
        return "checkpoint"
    if trained_by_vvm(model):
        return "trained"
    if published_arch(model) is not None:
        return "published"
    raise ValueError(
        f"model {model.name!r} has no published weights vvm knows how to load: pass "
        "init.checkpoint=/path/to/state_dict.pt or use init=random"
    )


class WeightsUnavailable(RuntimeError):
    """Trained weights that are not there, asked for by a caller that never trains."""


def load_or_train(
    model: VisionModel,
    settings: ModelSettings,
    init: InitSettings,
    *,
    dataset_name: str,
    cache: CheckpointCache | None = None,
    fit: Fit | None = None,
    keep_dir: str | Path | None = None,
    known_checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Put the weights ``init`` asks for into ``model`` (built from ``settings``); returns facts for
    result.json. ``cache``: where a trained model's checkpoint lives (needed when the source is ``trained``).
    ``fit``: how to train when it is not there (None: never train; then ``known_checkpoint``, the file an
    earlier run saved the weights to, is tried, else :class:`WeightsUnavailable`). ``keep_dir``: where trained
    weights go when the cache cannot be written."""
    source = weights_source(settings, init)
    if source == "random":
        return {"weights": f"random (seed {settings.seed})", "trained": False}
    if source == "checkpoint":
        path = Path(str(init.checkpoint)).expanduser()
        load_checkpoint(model, path, dataset_name=dataset_name)
        return {"weights": f"checkpoint {path}", "trained": False, "checkpoint": str(path)}
    if source == "published":
        load_timm_pretrained(model, init.weights_file)
        where = published_source(model, init.weights_file)
        return {"weights": f"published weights ({where})", "trained": False}
    if cache is None:
        raise ValueError(f"{settings.name} needs trained weights: give load_or_train the checkpoint cache")
    facts = load_cached(model, cache, dataset_name)
    if facts is not None:
        return facts
    if fit is None:
        return load_known(model, cache, dataset_name, known_checkpoint)
    return train_and_save(model, fit, cache, dataset_name=dataset_name, keep_dir=keep_dir)


def load_cached(model: VisionModel, cache: CheckpointCache, dataset_name: str) -> dict[str, Any] | None:
    """The cache's checkpoint loaded into ``model`` (its facts), or None when there is none or it was damaged
    (then moved aside)."""
    path = cache.path
    for p in (path, cache.last):
        remove_stale_temporaries(p)
    if not (path.is_file() and readable_cache_file(path)):
        return None
    log.info("init=pretrained: using the cached checkpoint %s", path)
    try:
        load_checkpoint(model, path, dataset_name=dataset_name)
        facts = read_facts(path)
    except CheckpointMismatchError as e:
        if not cached_checkpoint_damaged(path, e):
            raise
        return None
    return {
        "weights": f"cached checkpoint {path}",
        "trained": False,
        "checkpoint": str(path),
        **{k: facts.get(k) for k in CACHED_FACTS},
    }


def load_known(
    model: VisionModel, cache: CheckpointCache, dataset_name: str, known: str | Path | None
) -> dict[str, Any]:
    """For a caller that never trains: the file an earlier run saved the trained weights to, else an error."""
    if known is not None and Path(known).is_file():
        load_checkpoint(model, Path(known), dataset_name=dataset_name)
        return {"weights": f"checkpoint {known}", "trained": False, "checkpoint": str(known)}
    raise WeightsUnavailable(
        f"the checkpoint {model.name} was trained into ({known or cache.path}) is gone: rerun the job "
        "(resume=true) to train it again"
    )


def train_and_save(
    model: VisionModel, fit: Fit, cache: CheckpointCache, *, dataset_name: str, keep_dir: str | Path | None
) -> dict[str, Any]:
    """Train ``model`` (it keeps the trained weights), save them to the cache on rank 0."""
    path, last = cache.path, cache.last
    log.info(
        "init=pretrained: no checkpoint at %s, training %s on %s for %d epochs",
        path,
        model.name,
        dataset_name,
        int(fit.recipe.epochs),
    )
    if last.is_file():
        readable_cache_file(last)
    trainer, facts = fit(model, last)
    if trainer.is_global_zero:
        saved = save_or_keep(
            path, model.net, keep_dir=keep_dir, dataset_name=dataset_name, facts={**facts, "key": path.stem}
        )
        if saved != path:
            facts["checkpoint_error"] = f"could not save to paths.checkpoints; kept at {saved}"
            path = saved
        if last.exists():
            last.unlink()
    trainer.strategy.barrier("vvm-checkpoint-saved")
    log.info(
        "init=pretrained: trained in %.1f s (train acc %s, val acc %s), saved %s",
        facts["train_seconds"],
        facts.get("train_accuracy"),
        facts.get("val_accuracy"),
        path,
    )
    return {
        "weights": f"trained {facts['train_epochs']} epochs, saved to {path}",
        "trained": True,
        "checkpoint": str(path),
        **facts,
    }


def readable_cache_file(path: Path) -> bool:
    """Whether the cache file ``path`` (vvm's own: ``<key>.ckpt`` or ``<key>.last.ckpt``, both plain values that
    ``torch.load(weights_only=True)`` reads) reads as a torch file; one that does not (truncated, empty, random
    bytes, or objects beyond plain values: a hostile pickle) is moved aside to ``<name>.corrupt-<time>`` with a
    warning, so that the model is trained again (or resumed from the other file)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception as e:  # noqa: BLE001 - anything torch cannot read is damage here
        cached_checkpoint_damaged(path, e)
        return False


def cached_checkpoint_damaged(path: Path, err: BaseException) -> bool:
    """Move the damaged cache file ``path`` aside (never a file the user named: only the cache's own) and warn.
    Returns whether it was moved (false when ``err`` is not about the file's bytes)."""
    text = str(err)
    if isinstance(err, CheckpointMismatchError) and "not a readable torch file" not in text:
        return False
    if isinstance(err, pickle.UnpicklingError):  # never torch's advice to load it unsafely
        text = refused_objects(err)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    log.warning(
        "the cached checkpoint %s could not be read (%s: %s); moved it to %s and %s",
        path,
        type(err).__name__,
        " ".join(text.split())[:200],
        aside,
        "the training resumes from its last saved epoch or starts again"
        if path.name.endswith(".last.ckpt")
        else "the model is trained again",
    )
    return True


def save_or_keep(
    path: Path, net: Any, *, keep_dir: str | Path | None, dataset_name: str, facts: dict[str, Any]
) -> Path:
    """Save the trained weights to the cache file ``path``; when that fails for any reason (a full disk, a quota
    or a file-size limit: ``OSError``, or torch's zip writer failing midway with ``RuntimeError: ... unexpected
    pos``; a folder that became unwritable), keep them in ``keep_dir`` (the run directory), else in the system's
    temporary directory, and say where. Returns the file written; when no copy could be written the error says
    so."""
    places = [(path, "paths.checkpoints")]
    if keep_dir is not None:
        places.append((Path(keep_dir) / path.name, "the run directory"))
    places.append((Path(tempfile.gettempdir()) / f"vvm-{path.name}", "the temporary directory"))
    errors = []
    for place, where in places:
        try:
            saved = save_trained(place, net, dataset_name=dataset_name, facts=facts)
        except Exception as e:  # noqa: BLE001 - any failed write: try the next place
            errors.append(f"{where} ({place}): {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            continue
        if place != path:
            log.warning(
                "could not save the trained weights to %s; kept them in %s: %s. Move that file to %s to reuse "
                "it, or pass init.checkpoint=%s",
                "; ".join(errors),
                where,
                saved,
                path,
                saved,
            )
        return saved
    raise OSError(
        "the trained weights could not be written anywhere, so they are lost with this process: "
        f"{'; '.join(errors)}. Free some disk space (or raise the quota or file-size limit) and run again"
    )


__all__ = [
    "CACHED_FACTS",
    "INITS",
    "WeightsUnavailable",
    "load_or_train",
    "save_or_keep",
    "train_and_save",
    "weights_source",
]
