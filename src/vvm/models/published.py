"""Published timm weights, loaded into a built :class:`VisionModel` or looked for before anything is built: plain
functions, no decisions (those are :func:`vvm.pipeline.weights.load_or_train`'s).

- :func:`load_timm_pretrained`: the published weights of the timm pretrained config the network was built with
  (``vit_large_patch32_224.orig_in21k`` for ``vit_l32``), from ``weights_file`` when given (a
  ``.safetensors``/``.pth``/``.bin`` file, as downloaded from the Hugging Face hub), else from the hub (or its
  local cache), through timm's public loader ``timm.models.load_pretrained`` (the config's ``file`` override
  for a file). The model's checkpoint filter (timm's ``checkpoint_filter_fn``) is applied, then every key must
  match except the classifier: when the published head has another number of classes (ImageNet-21k ViT weights
  ship without one), the head keeps its seeded random initialisation and a warning says so.
- :func:`check_published_weights`: before anything is built (ViT-L/32 has 305M parameters), whether the published
  weights of a timm architecture can be had: ``weights_file`` exists, or the hub's (or torch hub's) local cache
  holds them, or the host answers within a few seconds. The same errors as :func:`load_timm_pretrained`, in
  seconds instead of after the model is built.

Weights that do not fit are a :class:`~vvm.models.checkpoints.CheckpointMismatchError`, a missing file a
``FileNotFoundError``; published weights that cannot be reached a ``RuntimeError`` that says how to get them.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vvm.models.base import VisionModel
from vvm.models.checkpoints import CheckpointMismatchError, classes_of, state_differences

__all__ = ["check_published_weights", "load_timm_pretrained", "published_source"]


# ------------------------------------------------------------------------------------ published timm weights
def _hub_hint(cfg: Mapping[str, Any]) -> str:
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        return (
            f"model.safetensors from https://huggingface.co/{hub_id} (e.g. `hf download {hub_id} "
            "model.safetensors --local-dir weights/`)"
        )
    if cfg.get("url"):
        return f"the file at {cfg['url']}"
    return "the published weights file"


def _arch(cfg: Mapping[str, Any]) -> str:
    arch = cfg.get("architecture") or "the model"
    return f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch


def _offline_unless_reachable(url: str) -> None:
    """Without a connection to ``url`` (tried for a few seconds), switch the Hugging Face hub to offline mode:
    its local cache still serves, and a miss fails at once instead of after a minute of retries."""
    import os

    from vvm.io import host_reachable

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return
    if not host_reachable(url, timeout=5.0):
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = True
        except Exception:  # noqa: BLE001 - an older hub reads the variable itself
            pass


def _published_cfg(net: nn.Module, weights_file: str | Path | None) -> dict[str, Any]:
    """The network's pretrained config, pointed at ``weights_file`` when given (timm's ``file`` override wins
    over the hub); without one, the hub goes offline when it cannot be reached (its cache still serves)."""
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    if weights_file is None:
        if cfg.get("hf_hub_id"):
            _offline_unless_reachable("https://huggingface.co")
        return cfg
    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"init.weights_file={str(path)!r} does not exist: expected the published weights of {_arch(cfg)}, "
            f"{_hub_hint(cfg)}"
        )
    cfg.pop("state_dict", None)
    if path.suffix != ".npz":  # a state dict (.safetensors, .pth, .bin), not the JAX layout custom_load reads
        cfg.pop("custom_load", None)
    return {**cfg, "file": str(path)}


def _checked_filter(net: nn.Module, cfg: Mapping[str, Any], source: str, reinit: list[str]) -> Any:
    """A ``filter_fn`` for timm's loader: the model's own checkpoint filter, then every key must fit the network
    except a classifier whose published form has another number of classes (listed in ``reinit``)."""
    model_filter = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    classifiers = cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)

    def check(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        if callable(model_filter):
            try:
                state = model_filter(state, model)
            except TypeError:
                state = model_filter(state)
        own = model.state_dict()
        heads = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
        reinit[:] = sorted(
            k for k in heads if k in own and (k not in state or state[k].shape != own[k].shape)
        )
        state = {k: v for k, v in state.items() if not (k in heads and (k in reinit or k not in own))}
        diff = state_differences(own, state, skip=set(reinit))
        if diff:
            raise CheckpointMismatchError(
                f"{source} does not hold weights of {_arch(cfg)} as built: {'; '.join(diff)}. Expected "
                f"{_hub_hint(cfg)}"
            )
        return state

    return check


def load_timm_pretrained(model: VisionModel, weights_file: str | Path | None = None) -> list[str]:
    """Load the published weights of ``model.net``'s timm pretrained config, from ``weights_file`` or the hub,
    through timm's public loader (``timm.models.load_pretrained`` with the config's ``file`` override).

    Returns the classifier keys that kept their random initialisation because the published head has another
    number of classes (or none). Any other missing, unexpected or mis-shaped key is an error.
    """
    import timm.models

    net = model.net
    if not getattr(net, "pretrained_cfg", None):
        raise ValueError(f"model {model.name!r} has no timm pretrained config: no published weights to load")
    cfg = _published_cfg(net, weights_file)
    source = (
        str(weights_file)
        if weights_file is not None
        else cfg.get("hf_hub_id") or cfg.get("url") or _arch(cfg)
    )
    reinit: list[str] = []
    try:
        timm.models.load_pretrained(
            net,
            pretrained_cfg=cfg,
            num_classes=classes_of(net) or 0,
            filter_fn=_checked_filter(net, cfg, source, reinit),
        )
    except CheckpointMismatchError:
        raise
    except Exception as err:
        if weights_file is not None:
            raise CheckpointMismatchError(
                f"init.weights_file={str(weights_file)!r} could not be read as weights ({type(err).__name__}: "
                f"{err}): expected {_hub_hint(cfg)}"
            ) from err
        raise RuntimeError(
            f"could not fetch the published weights of {_arch(cfg)} ({type(err).__name__}: {err}). Offline, "
            f"download {_hub_hint(cfg)} on a machine with internet and pass init.weights_file=/path/to/it"
        ) from err
    if reinit:
        warnings.warn(
            f"{model.name}: the published weights of {_arch(cfg)} have "
            f"{cfg.get('num_classes') or 'no'} classes and the model {classes_of(net)}: the classifier "
            f"({', '.join(reinit)}) keeps its seeded random initialisation",
            stacklevel=2,
        )
    return reinit


def published_source(model: VisionModel, weights_file: str | Path | None = None) -> str:
    """Where :func:`load_timm_pretrained` takes the weights from: ``weights_file``, else the hub id or url of
    the network's pretrained config."""
    if weights_file:
        return str(weights_file)
    pcfg = dict(getattr(model.net, "pretrained_cfg", None) or {})
    return str(pcfg.get("hf_hub_id") or pcfg.get("url") or pcfg.get("architecture") or model.name)


# ------------------------------------------------------------------------------ published weights, looked for first
def _timm_load_location(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    """Where timm's loader takes a pretrained config's weights from, read off the config's public fields in
    timm's order: a ``file``, else the hub (``hf_hub_id``, with ``hf_hub_filename`` when set), else a ``url``."""
    if cfg.get("file"):
        return "file", cfg["file"]
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename")
        return "hf-hub", (cfg["hf_hub_id"], filename) if filename else cfg["hf_hub_id"]
    if cfg.get("url"):
        return "url", cfg["url"]
    return "", None


def _cached(load_from: str, loc: Any) -> str | None:
    """The local file that already holds the weights timm would fetch from ``loc`` (None when none does)."""
    if load_from == "url":
        import os
        from urllib.parse import urlsplit

        f = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(str(loc)).path)
        return str(f) if f.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    hub_id, filename = (loc[0], loc[1]) if isinstance(loc, (list, tuple)) else (loc, "pytorch_model.bin")
    repo, _, revision = str(hub_id).partition("@")
    names = [filename, filename[: -len(".bin")] + ".safetensors"] if filename.endswith(".bin") else [filename]
    if filename == "pytorch_model.bin":
        names = ["model.safetensors", *names]
    for name in names:
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def check_published_weights(
    arch: str, weights_file: str | Path | None = None, *, timeout: float = 5.0
) -> str:
    """Whether the published weights of timm architecture ``arch`` (``vit_large_patch32_224.orig_in21k``, or a
    name without a tag: timm's default) can be had, without building the network; returns where they come from.

    ``weights_file`` must exist (``FileNotFoundError``). Without it the weights come from where timm takes them
    (the Hugging Face hub, or a url): fine when its local cache holds them or the host answers within
    ``timeout`` seconds; otherwise the ``RuntimeError`` :func:`load_timm_pretrained` would raise after the build.
    An unknown architecture or tag is a ``ValueError``.
    """
    import timm
    from timm.models import get_pretrained_cfg

    from vvm.io import host_reachable

    if not timm.is_model(arch.split(".", 1)[0]):
        raise ValueError(f"timm has no model {arch!r} (see timm.list_models('*pattern*'))")
    try:
        pcfg = get_pretrained_cfg(arch)
    except RuntimeError as err:  # an unknown tag
        raise ValueError(f"{arch!r}: {err}") from err
    cfg = pcfg.to_dict() if pcfg is not None else {}
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"init.weights_file={str(path)!r} does not exist: expected the published weights of "
                f"{_arch(cfg) if cfg else arch}, {_hub_hint(cfg)}"
            )
        return str(path)
    if not cfg:
        raise ValueError(
            f"timm has no published weights for {arch!r}: pass init.weights_file or use init=random"
        )
    load_from, loc = _timm_load_location(cfg)
    if load_from == "file":
        if not Path(str(loc)).expanduser().is_file():
            raise FileNotFoundError(
                f"timm's pretrained config for {_arch(cfg)} names the file {loc}, which does not exist"
            )
        return str(loc)
    if load_from not in ("hf-hub", "url"):
        raise RuntimeError(
            f"timm's pretrained config for {_arch(cfg)} names no weights (source {load_from!r})"
        )
    source = cfg.get("hf_hub_id") or cfg.get("url") or _arch(cfg)
    if _cached(load_from, loc) is not None:
        return source
    host = "https://huggingface.co" if load_from == "hf-hub" else str(loc)
    if not host_reachable(host, timeout=timeout):
        raise RuntimeError(
            f"could not fetch the published weights of {_arch(cfg)} ({host} cannot be reached and they are not "
            f"in the local cache). Offline, download {_hub_hint(cfg)} on a machine with internet and pass "
            "init.weights_file=/path/to/it"
        )
    return source
