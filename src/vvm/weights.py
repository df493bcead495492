"""The weights a job measures: the one place that decides what ``init`` means for a model.

:func:`weights_source` decides, :func:`load_or_train` does it:

- ``random``: nothing to do, the seeded construction of :func:`vvm.models.create` is the initialisation.
- ``checkpoint``: ``init=pretrained`` with ``init.checkpoint``: load that file (any model), through
  :func:`vvm.models.checkpoints.load_checkpoint`.
- ``published``: ``init=pretrained`` on a model with published weights (``vit_l32``, ``timm``): those weights,
  from ``init.weights_file`` or the hub (:func:`vvm.models.checkpoints.load_timm_pretrained`); nothing trains.
- ``trained``: ``init=pretrained`` on a model vvm trains (r18 r34 r50 lambda_r*, see
  :func:`vvm.models.trained_by_vvm`): the cached checkpoint of this recipe under ``paths.checkpoints`` (see
  :mod:`vvm.train.cache`); when there is none, train with the seed's recipe (:func:`vvm.train.fit.train`),
  resuming from ``<key>.last.ckpt`` when an earlier training was interrupted, and save the result atomically.
  The trained model keeps its weights in memory.

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
from typing import Any

import torch
from omegaconf import DictConfig

from vvm.config import plain
from vvm.io import remove_stale_temporaries
from vvm.models import trained_by_vvm
from vvm.models.base import VisionModel
from vvm.models.checkpoints import (
    CheckpointMismatchError,
    load_checkpoint,
    load_timm_pretrained,
    published_source,
)
from vvm.train.cache import cache_paths, read_facts, save_trained

log = logging.getLogger(__name__)

INITS = ("random", "pretrained")
# what result.json repeats from a cached checkpoint's facts (the training that made it)
CACHED_FACTS = (
    "train_accuracy",
    "val_accuracy",
    "train_loss",
    "train_epochs",
    "train_seconds",
    "train_precision",
)


def weights_source(model: VisionModel, init: Any) -> str:
    """Where the weights ``init`` (a mapping with ``name`` and optional ``checkpoint``, ``weights_file``) asks
    for come from: ``random``, ``checkpoint``, ``published`` or ``trained`` (see the module docstring)."""
    init = plain(init)
    name = init.get("name")
    if name not in INITS:
        raise ValueError(f"init={name!r} is not known: use one of {', '.join(INITS)}")
    if name == "random":
        return "random"
    if trained_by_vvm(model) and init.get("weights_file") is not None:
        raise ValueError(
            f"init.weights_file is for timm models with published weights; {model.name} has none: pass the "
            "weights it was trained with as init.checkpoint"
        )
    if init.get("checkpoint") is not None:
        return "checkpoint"
    if trained_by_vvm(model):
        return "trained"
    if getattr(model.net, "pretrained_cfg", None):
        return "published"
    raise ValueError(
        f"model {model.name!r} (family {model.family!r}) has no published weights vvm knows how to load: pass "
        "init.checkpoint=/path/to/state_dict.pt or use init=random"
    )


def load_or_train(
    model: VisionModel, cfg: DictConfig, datamodule: Any, *, logger: Any = None, callbacks: list | None = None
) -> dict[str, Any]:
    """Put the weights ``cfg.init`` asks for into ``model``; returns facts for result.json.

    ``logger`` and ``callbacks`` (the CKA callback, whose ``every_n_epochs`` probes run during the fit) go to
    the training Trainer when a training is needed.
    """
    init = plain(cfg.init)
    source = weights_source(model, init)
    dataset_name = getattr(datamodule, "name", None)
    if source == "random":
        return {"weights": f"random (seed {cfg.seed})", "trained": False}
    if source == "checkpoint":
        path = Path(str(init["checkpoint"])).expanduser()
        load_checkpoint(model, path, dataset_name=dataset_name)
        return {"weights": f"checkpoint {path}", "trained": False, "checkpoint": str(path)}
    if source == "published":
        load_timm_pretrained(model, init.get("weights_file"))
        where = published_source(model, init.get("weights_file"))
        return {"weights": f"published weights ({where})", "trained": False}
    path, last = cache_paths(cfg, str(dataset_name))
    for p in (path, last):
        remove_stale_temporaries(p)
    if path.is_file() and readable_cache_file(path):
        log.info("init=pretrained: using the cached checkpoint %s", path)
        try:
            load_checkpoint(model, path, dataset_name=dataset_name)
            facts = read_facts(path)
        except CheckpointMismatchError as e:
            if not cached_checkpoint_damaged(path, e):
                raise
            return train_and_save(model, cfg, datamodule, path, last, logger=logger, callbacks=callbacks)
        return {
            "weights": f"cached checkpoint {path}",
            "trained": False,
            "checkpoint": str(path),
            **{k: facts.get(k) for k in CACHED_FACTS},
        }
    return train_and_save(model, cfg, datamodule, path, last, logger=logger, callbacks=callbacks)


def train_and_save(
    model: VisionModel,
    cfg: DictConfig,
    datamodule: Any,
    path: Path,
    last: Path,
    *,
    logger: Any = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train ``model`` (it keeps the trained weights), save them to the cache file ``path`` on rank 0."""
    from vvm.train.fit import train

    dataset_name = str(getattr(datamodule, "name", None))
    log.info(
        "init=pretrained: no checkpoint at %s, training %s on %s for %d epochs",
        path,
        cfg.model.name,
        dataset_name,
        int(cfg.train.epochs),
    )
    if last.is_file():
        readable_cache_file(last)
    trainer, facts = train(model, cfg, datamodule, last=last, logger=logger, callbacks=callbacks)
    if trainer.is_global_zero:
        saved = save_or_keep(
            path, model.net, cfg, dataset_name=dataset_name, facts={**facts, "key": path.stem}
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
    """Whether the cache file ``path`` (vvm's own: ``<key>.ckpt`` or ``<key>.last.ckpt``) reads as a torch file;
    one that does not (truncated, empty, random bytes) is moved aside to ``<name>.corrupt-<time>`` with a
    warning, so that the model is trained again (or resumed from the other file)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(
            e
        ):  # objects beyond plain values: a Lightning last.ckpt holds some
            return True
        cached_checkpoint_damaged(path, e)
        return False
    except Exception as e:  # noqa: BLE001 - anything torch cannot read is damage here
        cached_checkpoint_damaged(path, e)
        return False


def cached_checkpoint_damaged(path: Path, err: BaseException) -> bool:
    """Move the damaged cache file ``path`` aside (never a file the user named: only the cache's own) and warn.
    Returns whether it was moved (false when ``err`` is not about the file's bytes)."""
    text = str(err)
    if isinstance(err, CheckpointMismatchError) and "not a readable torch file" not in text:
        return False
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    log.warning(
        "the cached checkpoint %s could not be read (%s: %s); moved it to %s and %s",
        path,
        type(err).__name__,
        text[:200],
        aside,
        "the training resumes from its last saved epoch or starts again"
        if path.name.endswith(".last.ckpt")
        else "the model is trained again",
    )
    return True


def save_or_keep(path: Path, net: Any, cfg: DictConfig, *, dataset_name: str, facts: dict[str, Any]) -> Path:
    """Save the trained weights to the cache file ``path``; when that fails for any reason (a full disk, a quota
    or a file-size limit: ``OSError``, or torch's zip writer failing midway with ``RuntimeError: ... unexpected
    pos``; a folder that became unwritable), keep them in the run directory, else in the system's temporary
    directory, and say where. Returns the file written; when no copy could be written the error says so."""
    places = [
        (path, "paths.checkpoints"),
        (Path(str(cfg.paths.output_dir)) / path.name, "the run directory"),
        (Path(tempfile.gettempdir()) / f"vvm-{path.name}", "the temporary directory"),
    ]
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
                "; ".join(errors), where, saved, path, saved,
            )  # fmt: skip
        return saved
    raise OSError(
        "the trained weights could not be written anywhere, so they are lost with this process: "
        f"{'; '.join(errors)}. Free some disk space (or raise the quota or file-size limit) and run again"
    )


__all__ = ["CACHED_FACTS", "INITS", "load_or_train", "save_or_keep", "train_and_save", "weights_source"]
