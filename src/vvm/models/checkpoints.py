"""Loading weights into a built :class:`VisionModel`: plain functions, no decisions (those are
:func:`vvm.pipeline.weights.load_or_train`'s).

- :func:`load_checkpoint`: a vvm checkpoint into ``model.net``: either a state dict of the network
  (``model.net.state_dict()``) or a Lightning checkpoint whose ``state_dict`` holds ``model.net.*`` keys
  (``net.*`` and ``module.*`` prefixes are accepted too). Read with ``torch.load(weights_only=True)``, so a
  checkpoint must hold tensors and plain containers only. Every key and shape must match (a checkpoint of another
  architecture or trained with another number of classes is an error naming the difference). If the checkpoint
  records its dataset (a top-level ``dataset_name`` or ``hyper_parameters.dataset_name``), it must be the run's.

It raises :class:`CheckpointMismatchError` when weights do not fit, ``FileNotFoundError`` for a missing file.
Published timm weights are :mod:`vvm.models.published`'s.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vvm.models.base import VisionModel

__all__ = ["CheckpointMismatchError", "load_checkpoint", "read_checkpoint", "refused_objects"]

# prefixes of the network's keys in the checkpoints we accept: Lightning module (self.model = VisionModel),
# a VisionModel state dict, DataParallel/DDP
_PREFIXES = ("model.net.", "net.", "module.")


class CheckpointMismatchError(ValueError):
    """A checkpoint or weights file that does not fit the model (keys, shapes, dataset)."""


# ---------------------------------------------------------------------------------------------- checkpoints
def refused_objects(err: pickle.UnpicklingError) -> str:
    """What a torch file that ``torch.load(weights_only=True)`` refuses holds, in vvm's words: never torch's
    advice to load it unsafely (``weights_only=False`` runs whatever code the file names)."""
    named = re.findall(r"GLOBAL ([\w.]+)", str(err))
    what = f" (it names {', '.join(dict.fromkeys(named))})" if named else ""
    return (
        f"holds Python objects other than tensors and plain containers{what}, which vvm never loads: loading "
        "them could run any code"
    )


def _read(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointMismatchError(
            f"{what} {str(path)!r} {refused_objects(err)}; save the network's state dict instead: "
            "torch.save(model.net.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointMismatchError(f"{what} {str(path)!r} is not a readable torch file: {err}") from err


def _strip(state: Mapping[str, Any], path: Path, lightning: bool) -> dict[str, Tensor]:
    keys = list(state)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if lightning:
        raise CheckpointMismatchError(
            f"Lightning checkpoint {str(path)!r} has no 'model.net.*' keys (found e.g. {keys[:4]}): expected the "
            "vvm LightningModule's checkpoint, whose network is self.model.net"
        )
    return dict(state)


def _recorded_dataset(obj: Mapping[str, Any]) -> str | None:
    for holder in (obj, obj.get("hyper_parameters") or {}):
        if isinstance(holder, Mapping) and isinstance(holder.get("dataset_name"), str):
            return holder["dataset_name"]
    return None


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], str | None]:
    """The network state dict in checkpoint ``path`` and the dataset it records (or None)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(
            f"init.checkpoint={str(path)!r} is a directory: name the checkpoint file itself (a state dict of the "
            "network, or a Lightning checkpoint with model.net.* keys)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"init.checkpoint={str(path)!r} does not exist: expected a state dict of the network "
            "(torch.save(model.net.state_dict(), path)) or a Lightning checkpoint with model.net.* keys; with "
            "init.checkpoint=null, init=pretrained trains the CIFAR model first"
        )
    obj = _read(path, "checkpoint")
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict"
        )
    lightning = isinstance(obj.get("state_dict"), Mapping)
    state = _strip(obj["state_dict"] if lightning else obj, path, lightning)
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} is not a state dict: {bad[:4]} are not tensors"
        )
    return state, _recorded_dataset(obj)


def state_differences(
    own: Mapping[str, Tensor], state: Mapping[str, Tensor], skip: set[str] = frozenset()
) -> list[str]:
    missing = [k for k in own if k not in state and k not in skip]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    out = []
    if missing:
        out.append(f"{len(missing)} keys missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        out.append(f"{len(shapes)} shapes differ ({'; '.join(shapes[:3])})")
    return out


def classes_of(net: nn.Module) -> int | None:
    n = getattr(net, "num_classes", None)
    if isinstance(n, int):
        return n
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def load_checkpoint(model: VisionModel, path: str | Path, *, dataset_name: str | None = None) -> None:
    """Load a vvm checkpoint (network state dict or Lightning checkpoint) into ``model.net``, strictly."""
    state, recorded = read_checkpoint(path)
    if dataset_name is not None and recorded is not None and recorded != dataset_name:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} was trained on {recorded!r}, but this run measures {dataset_name!r}: pass "
            f"a checkpoint trained on {dataset_name!r}, or init.checkpoint=null to train one"
        )
    own = model.net.state_dict()
    diff = state_differences(own, state)
    if diff:
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} does not fit model {model.name!r} with {classes_of(model.net)} classes: "
            f"{'; '.join(diff)}. Expected weights of the same architecture trained on a dataset with as many "
            "classes (another model or dataset needs its own checkpoint)"
        )
    model.net.load_state_dict(state, strict=True)
