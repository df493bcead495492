"""The whole job's config checked before any work: a bad setting is an error that names its key, before a
training that would be thrown away.

- :func:`check_config` (before anything is built): every key of every node vvm reads is known (an unknown one
  names the closest known key: ``cka.kernal`` -> "did you mean cka.kernel"), the CKA options (kernel,
  estimator, precision, RBF bandwidth), batch sizes and sample counts against the estimator's minimum, the
  training's epochs, and that the run directory is writable.
- :func:`check_job` (models and data built, no weights yet): the layer names resolve, and run in a dry forward
  pass on the meta device; the CKA pass's batch plan has at least one batch the estimator can use; when a
  training is due, ``paths.checkpoints`` is writable and has room for the checkpoint.
"""

from __future__ import annotations

import difflib
import inspect
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vvm.cka.functional import check_estimator, check_kernel, min_samples
from vvm.cka.metric import check_precision
from vvm.config import SPEED_KEYS, plain

# cka.* keys that the dataset reads (through interpolations in conf/dataset/), not the CKA callback
CKA_DATA_KEYS = ("batch_size", "max_samples", "shuffle")
# CKACallback arguments that the job fills in, not the config
CKA_JOB_ARGS = ("output_dir", "title", "model_label", "other", "other_label")
TRAIN_KEYS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "gradient_clip_val", "precise_bn")
TOP_KEYS = (
    "model",
    "init",
    "dataset",
    "trainer",
    "logger",
    "cka",
    "train",
    "compare",
    "compare_init",
    "seed",
    "tag",
    "paths",
    "resume",
    "hydra",
)
FIXED_KEYS = {
    "init": ("name", "checkpoint", "weights_file"),
    "compare_init": ("name", "checkpoint", "weights_file"),
    "paths": ("data", "checkpoints", "output_dir"),
    "train": (*TRAIN_KEYS, "speed"),
    "train.speed": SPEED_KEYS,
}


class ConfigError(ValueError):
    """A setting that cannot work, found before any work started."""


def closest(key: str, known: Any, prefix: str = "") -> str:
    """``did you mean <prefix>X?`` for the known key closest to ``key``, else the list of known keys."""
    known = sorted(str(k) for k in known if not str(k).startswith("_"))
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return f"did you mean {prefix}{near[0]}?"
    return f"the known keys are {', '.join(prefix + k for k in known)}"


# ---------------------------------------------------------------------------------------------- keys
def _target_params(target: str, node: dict[str, Any]) -> set[str] | None:
    """The keyword arguments ``target`` accepts, or None when it takes any (``**kwargs`` all the way)."""
    from hydra.utils import get_method

    fn = get_method(target)
    if target == "vvm.models.create":
        from vvm.models import _REGISTRY

        entry = _REGISTRY.get(node.get("name"))
        own = {n for n, p in inspect.signature(fn).parameters.items() if p.kind != p.VAR_KEYWORD}
        builder = _params(entry.builder) if entry is not None else set()
        return None if builder is None else own | builder
    if inspect.isclass(fn):
        out: set[str] = set()
        for cls in fn.__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            params = _params(init)
            if params is not None:
                return out | params
            out |= {p for p in inspect.signature(init).parameters if p not in ("self", "kwargs")}
        return None
    return _params(fn)


def _params(fn: Any) -> set[str] | None:
    sig = inspect.signature(fn)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n in sig.parameters if n != "self"}


def known_keys(cfg: DictConfig, name: str) -> set[str] | None:
    """The keys the config node ``name`` may hold (None: any)."""
    if name in FIXED_KEYS:
        return set(FIXED_KEYS[name])
    node = plain(cfg.get(name)) if "." not in name else None
    if not node or "_target_" not in node:
        return None
    target = str(node["_target_"])
    if name == "cka":
        params = _target_params(target, node)
        return None if params is None else (params - set(CKA_JOB_ARGS)) | set(CKA_DATA_KEYS) | {"_target_"}
    if name == "logger" and target.endswith("WandbLogger"):
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        return {
            "_target_",
            *inspect.signature(WandbLogger).parameters,
            *inspect.signature(wandb.init).parameters,
        }
    params = _target_params(target, node)
    return None if params is None else params | {"_target_", "_partial_", "_convert_", "_recursive_"}


def check_keys(cfg: DictConfig) -> None:
    """Every node vvm reads holds only keys it knows; an unknown key names the closest known one."""
    unknown = [k for k in cfg if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting of vvm: {closest(unknown[0], TOP_KEYS)}")
    for name in NODES:
        node = OmegaConf.select(cfg, name)
        if not isinstance(node, DictConfig):
            continue
        known = _compare_known(cfg) if name == "compare" else known_keys(cfg, name)
        if known is None:
            continue
        for key in node:
            if key not in known:
                raise ConfigError(
                    f"{name}.{key} is not a setting of {name}: {closest(str(key), known, f'{name}.')}"
                )


NODES = (
    "cka",
    "train",
    "train.speed",
    "init",
    "compare_init",
    "paths",
    "dataset",
    "model",
    "compare",
    "trainer",
    "logger",
)


def _compare_known(cfg: DictConfig) -> set[str] | None:
    node = plain(cfg.compare)
    if "_target_" not in node:
        return None
    params = _target_params(str(node["_target_"]), node)
    return None if params is None else params | {"_target_"}


# ---------------------------------------------------------------------------------------------- settings
def _engine_check(fn: Any, *args: Any) -> None:
    """Run one of the engine's checks, its message prefixed with ``cka.`` (it names the bare argument)."""
    try:
        fn(*args)
    except ValueError as e:
        raise ConfigError(f"cka.{e}") from None


def _count(value: Any, key: str, minimum: int, why: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: {why}")


def check_settings(cfg: DictConfig) -> None:
    """The CKA options, batch sizes and sample counts, and the training's epochs (see the module docstring)."""
    from vvm.cka.bandwidth import check_bandwidth_mode
    from vvm.cka.precision import check_tf32

    cka = plain(cfg.cka)
    _engine_check(check_kernel, cka.get("kernel"))
    _engine_check(check_estimator, cka.get("estimator"))
    _engine_check(check_precision, cka.get("precision"))
    _engine_check(check_bandwidth_mode, cka.get("rbf_bandwidth"))
    _engine_check(check_tf32, cka.get("tf32", "allow"))
    frac = cka.get("rbf_frac")
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not (math.isfinite(frac) and frac > 0):
        raise ConfigError(
            f"cka.rbf_frac={frac!r}: the RBF bandwidth fraction must be a finite number > 0 (1.0: "
            "the median heuristic)"
        )
    need = min_samples(str(cka["estimator"]))
    why = f"the {cka['estimator']} estimator needs at least {need} examples per batch"
    _count(cka.get("batch_size"), "cka.batch_size", need, why)
    if cka.get("batch_size") is None:
        raise ConfigError(f"cka.batch_size=null: {why}")
    _count(cka.get("max_samples"), "cka.max_samples", need, f"{why} (null: the whole split)")
    _count(
        cka.get("every_n_epochs"), "cka.every_n_epochs", 0, "0 (no CKA during training) or a number of epochs"
    )
    train = plain(cfg.train)
    _count(train.get("batch_size"), "train.batch_size", 1, "at least 1 example per training batch")
    _count(train.get("precise_bn"), "train.precise_bn", 0, "0 (off) or a number of training images")
    epochs = train.get("epochs")
    _count(epochs, "train.epochs", 0, "a number of epochs")
    if epochs == 0 and _trains(cfg):
        raise ConfigError(
            f"train.epochs=0 with init=pretrained: {cfg.model.name} is trained by vvm, and 0 epochs would save "
            "its random weights as trained ones; use train.epochs >= 1 (or init=random for untrained weights)"
        )


def _trains(cfg: DictConfig) -> bool:
    """Whether ``cfg``'s init asks vvm to train its model (init=pretrained, no init.checkpoint, a model vvm
    trains)."""
    from vvm.models import trained_by_vvm

    init = plain(cfg.init)
    name = cfg.model.get("name")
    return init.get("name") == "pretrained" and init.get("checkpoint") is None and trained_by_vvm(str(name))


# ---------------------------------------------------------------------------------------------- where it writes
def check_writable(path: str | Path, key: str, *, need_bytes: int = 0) -> Path:
    """Make ``path`` (a directory) if needed and write a file there; an error names ``key`` and the path.
    With ``need_bytes``, the file system must also have that much room."""
    path = Path(path).expanduser()
    fix = f"set {key} to a folder you can write to"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a file, not a directory: {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vvm-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"{key}={str(path)!r} is not writable ({type(e).__name__}: {e}): {fix}") from None
    free = shutil.disk_usage(path).free
    if need_bytes and free < need_bytes:
        raise ConfigError(
            f"{key}={str(path)!r} has {free / 2**20:.0f} MiB free, and this job writes about "
            f"{need_bytes / 2**20:.0f} MiB there: free some space or {fix}"
        )
    return path


def check_config(cfg: DictConfig) -> None:
    """Before anything is built: keys, settings, the run directory (see the module docstring)."""
    check_keys(cfg)
    check_settings(cfg)
    check_writable(cfg.paths.output_dir, "hydra.run.dir (the run directory, paths.output_dir)")


# ---------------------------------------------------------------------------------------------- models and data
def check_layers(
    model: Any, layers: Any, cka: dict[str, Any], *, key: str = "cka.layers", **other: Any
) -> None:
    """``layers`` resolve on ``model`` (a :class:`vvm.models.base.VisionModel`) with the CKA options, and every
    one of them runs in a forward pass (a dry run on the meta device, where the network allows one)."""
    from vvm.cka import StreamingCKA
    from vvm.cka.presets import dry_run

    spec = list(layers) if not isinstance(layers, str) else layers
    opts = {k: cka[k] for k in ("kernel", "estimator", "precision", "rbf_frac", "rbf_bandwidth") if k in cka}
    try:
        metric = StreamingCKA(model.net, spec, **opts, **other)
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
            "representation to compare: choose modules that run (or a preset: blocks, all, seed)"
        )


def check_plan(dm: Any, cfg: DictConfig) -> None:
    """At least one batch of the CKA pass (and of the probe, with ``cka.every_n_epochs``) holds the estimator's
    minimum number of examples."""
    estimator = str(cfg.cka.estimator)
    need = min_samples(estimator)
    plans = [("the CKA pass", dm.cka_batches())]
    if int(cfg.cka.get("every_n_epochs") or 0) > 0:
        plans.append(("the probe during training", dm.probe_batches()))
    for what, batches in plans:
        sizes = [len(b) for b in batches.plan]
        if not any(s >= need for s in sizes):
            raise ConfigError(
                f"{what} has {sum(sizes)} examples in batches of {sorted(set(sizes)) or [0]} (cka.batch_size="
                f"{cfg.cka.batch_size}, cka.max_samples={cfg.cka.get('max_samples')}, dataset.limit="
                f"{cfg.dataset.get('limit')}): the {estimator} estimator needs at least {need} examples per batch, "
                "so every batch would be skipped and nothing estimated; use more examples"
            )


def check_job(cfg: DictConfig, dm: Any, models: Any) -> None:
    """Models and data built, before any weights: layers, the batch plan, the checkpoint folder."""
    cka = plain(cfg.cka)
    other = {}
    if models.other is not None:
        other = {"other": models.other.net, "other_layers": cka.get("other_layers")}
        check_layers(models.other, cka.get("other_layers") or cka["layers"], cka, key="cka.other_layers")
    check_layers(models.model, cka["layers"], cka, **other)
    check_plan(dm, cfg)
    for model, node in ((models.model, cfg), (models.other, models.other_cfg)):
        if model is not None and _trains(node):
            size = sum(p.numel() * p.element_size() for p in model.net.parameters())
            # the final file, the resumable state (weights and momentum) and a temporary copy of each
            check_writable(cfg.paths.checkpoints, "paths.checkpoints", need_bytes=5 * size)


# ---------------------------------------------------------------------------------------------- command line
def unknown_overrides(overrides: list[str], config_dir: str | Path) -> list[str]:
    """Errors for command-line overrides of keys the config lacks (``cka.kernal=rbf``), naming the closest
    known key; Hydra alone would only suggest adding ``+``. Nothing when the config cannot be composed here
    (Hydra then reports)."""
    plain_keys = []
    groups = []
    for o in overrides:
        if o.startswith("-") or "=" not in o:
            continue
        key, value = o.split("=", 1)
        if key.startswith(("+", "~", "hydra.", "hydra/")):
            continue
        if "." in key:
            plain_keys.append(key)
        else:
            groups.append(f"{key}={value.split(',')[0]}")
    if not plain_keys:
        return []
    try:
        cfg = _compose(groups, config_dir)
    except Exception:  # noqa: BLE001 - Hydra reports what it cannot compose
        return []
    errors = []
    for key in plain_keys:
        if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        known = set(node.keys()) if isinstance(node, DictConfig) else set()
        known |= known_keys(cfg, parent) or set() if "." not in parent else set()
        errors.append(f"{key} is not a setting of {parent}: {closest(leaf, known, parent + '.')}")
    return errors


_MISSING = object()


def _compose(overrides: list[str], config_dir: str | Path) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


__all__ = [
    "CKA_DATA_KEYS",
    "ConfigError",
    "check_config",
    "check_job",
    "check_keys",
    "check_layers",
    "check_plan",
    "check_settings",
    "check_writable",
    "closest",
    "known_keys",
    "unknown_overrides",
]
