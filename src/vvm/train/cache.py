"""The checkpoint cache: trained CIFAR models under ``paths.checkpoints``, one file per training recipe.

A file is named ``<model>-<dataset>-e<epochs>-s<seed>-<hash>.ckpt``, where the hash (8 hex digits) covers
everything else that changes the trained weights: the model's settings, the dataset's settings that change the
training split (``num_classes``, ``limit``, sizes; not those marked ``not_recipe``: paths, loader workers, the
CKA pass's split), the training batch size, the job's seed and the ``train.*`` recipe. Left out: the speed
switches under ``train.speed`` (they change how fast a training runs, not the weights it gives), where files
live, how the CKA pass batches, and the Trainer's ``precision``: a model trained in bf16 on a GPU serves a CPU run
of the same recipe. So a sweep over kernels, estimators or layers trains each model once.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vvm.io import atomic_path
from vvm.settings import DatasetSettings, ModelSettings, TrainSettings, plain, recipe_fields

CACHE_VERSION = 1


def recipe(
    model: ModelSettings, dataset: DatasetSettings, train: TrainSettings, *, seed: int, dataset_name: str
) -> dict[str, Any]:
    """What the cache key's hash covers (see the module docstring)."""
    data = {"name": dataset_name, **recipe_fields(dataset), "batch_size": train.batch_size, "seed": seed}
    return {
        "version": CACHE_VERSION,
        "seed": seed,
        "model": plain(model),
        "dataset": data,
        "train": train.recipe(),
    }


@dataclass(frozen=True)
class CheckpointCache:
    """Where a recipe's trained weights live: ``<root>/<key>.ckpt`` and, while training, ``<key>.last.ckpt``."""

    root: Path
    key: str

    @classmethod
    def of(
        cls,
        root: str | Path,
        model: ModelSettings,
        dataset: DatasetSettings,
        train: TrainSettings,
        *,
        seed: int,
        dataset_name: str,
    ) -> CheckpointCache:
        r = recipe(model, dataset, train, seed=seed, dataset_name=dataset_name)
        digest = hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()[:8]
        key = f"{model.name}-{dataset_name}-e{int(train.epochs)}-s{int(seed)}-{digest}"
        return cls(Path(root).expanduser().absolute(), key)

    @property
    def path(self) -> Path:
        """The final checkpoint."""
        return self.root / f"{self.key}.ckpt"

    @property
    def last(self) -> Path:
        """The in-progress Lightning checkpoint of an interrupted training."""
        return self.root / f"{self.key}.last.ckpt"


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


__all__ = ["CheckpointCache", "atomic_torch_save", "read_facts", "recipe", "save_trained"]
