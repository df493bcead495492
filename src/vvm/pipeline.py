"""One job: config -> model + data -> (training when the init asks for it) -> CKA pass -> files + logger.

The CLI (``python -m vvm``), the sweep and the tests all go through :func:`run`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vvm.callbacks.cka import CKACallback, mean_offdiagonal
from vvm.io import load_json, write_json
from vvm.loggers import build_logger, log_config

log = logging.getLogger(__name__)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(kw, dict)
    return kw


def summarise_config(cfg: DictConfig) -> dict[str, Any]:
    return {
        "tag": cfg.get("tag"),
        "model": cfg.model.get("name"),
        "init": cfg.init.get("name"),
        "dataset": _dataset_name(cfg),
        "seed": cfg.seed,
        "kernel": cfg.cka.kernel,
        "estimator": cfg.cka.estimator,
        "precision": cfg.cka.precision,
        "layers": OmegaConf.to_container(cfg.cka.layers)
        if not isinstance(cfg.cka.layers, str)
        else cfg.cka.layers,
    }


def _layers(spec: Any) -> Any:
    if spec is None or isinstance(spec, str):
        return spec
    return OmegaConf.to_container(spec, resolve=True)


def compare_config(cfg: DictConfig) -> DictConfig:
    """The job's config with ``model``/``init`` replaced by ``compare``/``compare_init`` (the init defaults to
    the first model's), for building and initialising the second model exactly like a first one."""
    other = copy.deepcopy(cfg)
    with open_dict(other):
        other.model = cfg.compare
        if cfg.get("compare_init") is not None:
            other.init = cfg.compare_init
    return other


def axis_labels(summary: dict[str, Any]) -> tuple[str, str]:
    """Names for the heatmap's axes: the model names, with the inits where the names alone don't differ."""
    x = str(summary["model"])
    other = summary.get("compare")
    if not other:
        return x, x
    y = str(other["model"])
    if x == y:
        return f"{x} ({summary['init']})", f"{y} ({other['init']})"
    return x, y


def _title(summary: dict[str, Any], cfg: DictConfig) -> str:
    kind = f"{cfg.cka.kernel} CKA"
    other = summary.get("compare")
    if other:
        return (
            f"{summary['model']} ({summary['init']}) vs {other['model']} ({other['init']}), "
            f"{summary['dataset']} - {kind}"
        )
    return f"{summary['model']} ({summary['init']}, {summary['dataset']}) - {kind}"


def _dataset_name(cfg: DictConfig) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["dataset"])
    except Exception:
        return str(cfg.dataset.get("_target_", "?")).rsplit(".", 1)[-1]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and return what result.json holds. Writes into ``cfg.paths.output_dir``."""
    t_start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("resume"):
        previous = completed_result(out_dir, cfg)
        if previous is not None:
            log.info("resume: %s already has a complete result, skipping", out_dir)
            return {**previous, "resumed": True}
    summary: dict[str, Any] = {**summarise_config(cfg), "status": "running", "output_dir": str(out_dir)}
    timings: dict[str, float] = {}
    logger = None
    try:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        t = time.perf_counter()
        dm = instantiate(cfg.dataset)
        model = instantiate(cfg.model)
        model.set_data_normalization(dm.mean, dm.std)
        summary["family"] = getattr(model, "family", None)
        other, other_cfg = None, None
        if cfg.get("compare") is not None:
            other_cfg = compare_config(cfg)
            other = instantiate(other_cfg.model)
            other.set_data_normalization(dm.mean, dm.std)
            summary["compare"] = {"model": other_cfg.model.get("name"), "init": other_cfg.init.get("name")}
        timings["build"] = time.perf_counter() - t

        logger = build_logger(cfg.get("logger"))
        if logger:
            log_config(logger, cfg)

        label_x, label_y = axis_labels(summary)
        summary["model_x"], summary["model_y"] = label_x, label_y
        cka_cb = CKACallback(
            out_dir,
            layers=_layers(cfg.cka.layers),
            kernel=cfg.cka.kernel,
            estimator=cfg.cka.estimator,
            precision=cfg.cka.precision,
            rbf_frac=cfg.cka.rbf_frac,
            rbf_bandwidth=cfg.cka.get("rbf_bandwidth", "fixed"),
            every_n_epochs=cfg.cka.get("every_n_epochs", 0),
            title=_title(summary, cfg),
            model_label=label_x,
            other=other,
            other_layers=_layers(cfg.cka.get("other_layers")),
            other_label=label_y,
        )

        from vvm.train.weights import prepare_weights

        t = time.perf_counter()
        if other is not None:
            # the second model's weights first: CKA probes during the first model's training compare with it
            summary["compare"].update(prepare_weights(other, other_cfg, dm, logger=None, callbacks=[]) or {})
        train_info = prepare_weights(model, cfg, dm, logger=logger, callbacks=[cka_cb])
        timings["weights"] = time.perf_counter() - t
        summary.update(train_info or {})

        from vvm.train.module import VisionModule

        module = VisionModule(model, **OmegaConf.to_container(cfg.train, resolve=True))
        trainer = pl.Trainer(
            **trainer_kwargs(cfg),
            logger=logger if logger else False,
            callbacks=[cka_cb],
            default_root_dir=str(out_dir),
            enable_checkpointing=False,
        )
        t = time.perf_counter()
        metrics = trainer.test(module, datamodule=dm, verbose=False)
        timings["cka"] = time.perf_counter() - t
        final = cka_cb.final
        if trainer.is_global_zero and final is not None:
            res = final["result"]
            summary.update(
                {
                    "n_samples": res.n_samples,
                    "n_batches": res.n_batches,
                    "n_layers": [len(res.layers_x), len(res.layers_y)],
                    "layers_x": res.layers_x,
                    "layers_y": res.layers_y,
                    "undefined_layers": sorted(set(res.undefined_x + res.undefined_y)),
                    "activation_dtype": res.activation_dtype,
                    "mean_cka": mean_offdiagonal(res.matrix.numpy()),
                    "test_accuracy": float(metrics[0]["test/acc"])
                    if metrics and "test/acc" in metrics[0]
                    else None,
                    "files": {k: str(v) for k, v in final.get("paths", {}).items()},
                }
            )
        summary["status"] = "ok"
        return summary
    except Exception as e:
        summary["status"] = "failed"
        summary["error"] = f"{type(e).__name__}: {e}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        timings["total"] = time.perf_counter() - t_start
        summary["seconds"] = timings
        try:
            summary["config"] = OmegaConf.to_container(cfg, resolve=True)
        except Exception:
            summary["config"] = OmegaConf.to_container(cfg, resolve=False)
        if _is_rank_zero():
            write_json(out_dir / "result.json", summary)
        if logger:
            _finish_logger(logger, summary)


def completed_result(out_dir: str | Path, cfg: DictConfig | None = None) -> dict[str, Any] | None:
    """The result.json of a finished job in ``out_dir`` (status ok and cka.npz present), else None.

    With ``cfg``, the result must also come from the same config (see :func:`config_differences`): a sweep rerun
    into the same dir with other overrides recomputes instead of reusing another job's result.
    """
    out_dir = Path(out_dir)
    res_path, npz_path = out_dir / "result.json", out_dir / "cka.npz"
    if not (res_path.is_file() and npz_path.is_file()):
        return None
    try:
        prev = load_json(res_path)
    except ValueError:
        return None
    if prev.get("status") != "ok":
        return None
    if cfg is not None:
        diff = config_differences(prev.get("config"), _container(cfg))
        if diff:
            log.warning(
                "resume: %s holds a complete result of a different config (%s); computing it again",
                out_dir,
                ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else ""),
            )
            return None
    return prev


def _container(cfg: DictConfig) -> Any:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


_NOT_IDENTITY = ("resume", "paths", "logger")  # keys that do not change a job's result


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between a stored job config and the current one, ignoring
    ``resume``, ``paths`` and ``logger``, and keys only one side has (a key added to conf/ since the result was
    computed is not a difference; a value changed is). ``old`` not a dict: ``["config"]`` (nothing to compare)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ["config"]  # no stored config to compare with
    out: list[str] = []
    for k in old.keys() & new.keys():
        if not prefix and k in _NOT_IDENTITY:
            continue
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(old[k], dict) and isinstance(new[k], dict):
            out += config_differences(old[k], new[k], key)
        elif _normalised(old[k]) != _normalised(new[k]):
            out.append(key)
    return sorted(out)


def _normalised(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def _is_rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _finish_logger(logger: Any, summary: dict[str, Any]) -> None:
    from vvm.loggers import finish_logger

    finish_logger(logger, summary)
