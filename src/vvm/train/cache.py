"""The checkpoint cache: trained CIFAR models under ``paths.checkpoints``, one file per training recipe.

A file is named ``<model>-<dataset>-e<epochs>-s<seed>-<hash>.ckpt``, where the hash (8 hex digits) covers
everything else that changes the trained weights: the model's config, the dataset's config (``limit``,
``num_classes``, sizes, the training batch size...) and the ``train.*`` recipe. Left out: the speed switches
under ``train.speed`` (``compile``, ``gpu_resident``, ``channels_last``, ``save_last_every_s``, ``precision``:
they change how fast a training runs, not the weights it gives), where files live, what the CKA pass reads (``split``, ``max_samples``, ``eval_batch_size``,
``probe_size``), and the Trainer's ``precision``: a model trained in bf16 on a GPU serves a CPU run of the same
recipe. So a sweep over kernels, estimators or layers trains each model once.

Next to it, while a training runs, ``<key>.last.ckpt`` holds a recent finished epoch (a Lightning checkpoint:
weights, optimizer, schedule, loop state; written at most every ``train.speed.save_last_every_s`` seconds); a
training that finds it resumes from it, and deletes it once the final file is written. Both are written to a
temporary file and moved into place with ``os.replace``, so a reader never sees half a file.

The final file holds ``{"state_dict": {"model.net.<key>": tensor}, "dataset_name": ..., "vvm": facts}`` with
plain values only, which ``torch.load(weights_only=True)`` (and
:func:`vvm.models.checkpoints.load_checkpoint`) reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from vvm.config import plain
from vvm.io import atomic_path

CACHE_VERSION = 1
# dataset.* keys that do not change the training split (paths, loader workers, the CKA pass, the probe)
DATASET_IGNORED = frozenset(
    {
        "_target_",
        "root",
        "train_root",
        "download",
        "num_workers",
        "pin_memory",
        "eval_batch_size",
        "split",
        "max_samples",
        "cka_shuffle",
        "probe_size",
    }
)


def recipe(cfg: DictConfig, dataset_name: str) -> dict[str, Any]:
    """What the cache key's hash covers (see the module docstring)."""
    model = {k: v for k, v in plain(cfg.model).items() if k != "_target_"}
    dataset = {k: v for k, v in plain(cfg.dataset).items() if k not in DATASET_IGNORED}
    train = {k: v for k, v in plain(cfg.train).items() if k != "speed"}  # the recipe alone
    return {
        "version": CACHE_VERSION,
        "seed": cfg.seed,
        "model": model,
        "dataset": {"name": dataset_name, **dataset},
        "train": train,
    }


def cache_key(cfg: DictConfig, dataset_name: str) -> str:
    """``<model>-<dataset>-e<epochs>-s<seed>-<hash8>``, e.g. ``r18-digits-e20-s0-1a2b3c4d``."""
    r = recipe(cfg, dataset_name)
    digest = hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{cfg.model.name}-{dataset_name}-e{int(cfg.train.epochs)}-s{int(cfg.seed)}-{digest}"


def cache_paths(cfg: DictConfig, dataset_name: str) -> tuple[Path, Path]:
    """(final checkpoint, in-progress Lightning checkpoint) under ``cfg.paths.checkpoints``."""
    root = Path(str(cfg.paths.checkpoints)).expanduser().absolute()
    key = cache_key(cfg, dataset_name)
    return root / f"{key}.ckpt", root / f"{key}.last.ckpt"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, fsync, then ``os.replace``: ``path`` is whole or absent."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_trained(path: str | Path, net: nn.Module, *, dataset_name: str, facts: dict[str, Any]) -> Path:
    """Write the network's weights and the training's facts (plain values) atomically."""
    state = {
        f"model.net.{k}": v.detach().to("cpu", memory_format=torch.contiguous_format)
        for k, v in net.state_dict().items()
    }
    payload = {
        "state_dict": state,
        "dataset_name": dataset_name,
        "vvm": json.loads(json.dumps(facts, default=str)),
    }
    return atomic_torch_save(payload, path)


def read_facts(path: str | Path) -> dict[str, Any]:
    """The facts stored with a cached checkpoint (empty for a file written elsewhere)."""
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    facts = obj.get("vvm") if isinstance(obj, dict) else None
    return dict(facts) if isinstance(facts, dict) else {}


__all__ = [
    "atomic_torch_save",
    "cache_key",
    "cache_paths",
    "read_facts",
    "recipe",
    "save_trained",
]
