"""One job: config -> model + data -> weights (training when the init asks for it) -> CKA pass -> files + logger.

The CLI (``python -m vvm``, through :func:`vvm.job.run_job`), the sweep and the tests all go through :func:`run`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shlex
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vvm.cka.result import mean_offdiagonal
from vvm.config import check_moved_keys, container
from vvm.io import is_rank_zero, write_json
from vvm.loggers import build_logger, finish_logger, log_config
from vvm.models.base import VisionModel
from vvm.train.fit import trainer_factory, vision_module
from vvm.validate import CKA_DATA_KEYS, check_config, check_job
from vvm.weights import load_or_train

log = logging.getLogger(__name__)


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


@dataclass
class Models:
    """What a job measures: the model, and for cross-model CKA (``compare=...``) the second one and its config."""

    model: VisionModel
    other: VisionModel | None = None
    other_cfg: DictConfig | None = None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and return what result.json holds. Writes into ``cfg.paths.output_dir``.

    Every setting is checked before any work (:mod:`vvm.validate`). An interrupt (Ctrl-C, SIGTERM) records
    status ``interrupted`` and the command that resumes (a training resumes from its last saved epoch)."""
    t_start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {**summarise_config(cfg), "status": "running", "output_dir": str(out_dir)}
    timings: dict[str, float] = {}
    logger = None
    try:
        with sigterm_as_interrupt():
            check_moved_keys(cfg)
            check_config(cfg)
            pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
            t = time.perf_counter()
            dm, models = build(cfg, summary)
            check_job(cfg, dm, models)
            timings["build"] = time.perf_counter() - t
            logger = build_logger(cfg.get("logger"))
            if logger:
                log_config(logger, cfg)
            summary.update(measure(cfg, out_dir, dm, models, summary, timings, logger))
        summary["status"] = "ok"
        return summary
    except BaseException as e:
        interrupted = is_interrupt(e)
        summary["status"] = "interrupted" if interrupted else "failed"
        summary["error"] = (
            f"{type(e).__name__}: {e}" if not interrupted else "interrupted (Ctrl-C or SIGTERM)"
        )
        if interrupted:
            summary["resume"] = resume_command()
            log.error("interrupted: resume with `%s`", summary["resume"])
        else:
            summary["traceback"] = traceback.format_exc()
        raise
    finally:
        timings["total"] = time.perf_counter() - t_start
        summary["seconds"] = timings
        summary["config"] = container(cfg)
        _write_result(out_dir, summary)
        if logger:
            finish_logger(logger, summary)


def measure(
    cfg: DictConfig,
    out_dir: Path,
    dm: Any,
    models: Models,
    summary: dict[str, Any],
    timings: dict,
    logger: Any,
) -> dict[str, Any]:
    """The weights, then the CKA pass; returns the facts for result.json."""
    facts: dict[str, Any] = {}
    cka_cb = cka_callback(cfg, out_dir, summary, models.other)
    t = time.perf_counter()
    facts.update(prepare_weights(cfg, dm, models, summary, logger=logger, cka_cb=cka_cb))
    timings["weights"] = time.perf_counter() - t
    trainer = cka_trainer(cfg, out_dir, cka_cb, logger)
    t = time.perf_counter()
    metrics = trainer.test(vision_module(models.model, cfg.train), datamodule=dm, verbose=False)
    timings["cka"] = time.perf_counter() - t
    if trainer.is_global_zero and cka_cb.final is not None:
        facts.update(result_facts(cka_cb.final, metrics))
    return facts


def _write_result(out_dir: Path, summary: dict[str, Any]) -> None:
    if not is_rank_zero():
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "result.json", summary)
    except OSError as e:  # an unwritable run directory: the error that says so is already on its way
        log.error("could not write %s: %s", out_dir / "result.json", e)


def is_interrupt(e: BaseException) -> bool:
    """Ctrl-C (KeyboardInterrupt; Lightning turns one during a fit into SystemExit(1)) or SIGTERM."""
    return isinstance(e, (KeyboardInterrupt, SystemExit)) or type(e).__name__ == "SIGTERMException"


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the job runs, SIGTERM (SLURM's cancel, ``kill``) raises KeyboardInterrupt as Ctrl-C does, so the
    job records that it was interrupted instead of vanishing. Lightning's own handler runs first during a fit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_command() -> str:
    """The command that takes an interrupted job up again: the same command line (a training resumes from its
    ``<key>.last.ckpt``); in a multirun, ``python -m vvm.sweep resume <sweep dir>``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"python -m vvm.sweep resume {shlex.quote(str(hc.sweep.dir))}"
        return shlex.join(["python", "-m", "vvm", *[str(o) for o in hc.overrides.task]])
    except Exception:  # composed without Hydra's runtime
        return shlex.join(["python", "-m", "vvm", *sys.argv[1:]])


def build(cfg: DictConfig, summary: dict[str, Any]) -> tuple[Any, Models]:
    """The datamodule and the model(s), each told how the dataset normalises its images."""
    dm = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    model.set_data_normalization(dm.mean, dm.std)
    summary["family"] = getattr(model, "family", None)
    models = Models(model)
    if cfg.get("compare") is not None:
        models.other_cfg = compare_config(cfg)
        models.other = instantiate(models.other_cfg.model)
        models.other.set_data_normalization(dm.mean, dm.std)
        summary["compare"] = {
            "model": models.other_cfg.model.get("name"),
            "init": models.other_cfg.init.get("name"),
        }
    summary["model_x"], summary["model_y"] = axis_labels(summary)
    return dm, models


def cka_callback(cfg: DictConfig, out_dir: Path, summary: dict[str, Any], other: VisionModel | None) -> Any:
    """The CKA callback ``cfg.cka`` names (``_target_``), with what only the job knows: where it writes, the
    heatmap's title and axes, and the second model."""
    node = OmegaConf.masked_copy(cfg.cka, [k for k in cfg.cka if k not in CKA_DATA_KEYS])
    return instantiate(
        node,
        output_dir=out_dir,
        title=_title(summary, cfg),
        model_label=summary["model_x"],
        other=other,
        other_label=summary["model_y"],
        _convert_="all",
    )


def prepare_weights(
    cfg: DictConfig, dm: Any, models: Models, summary: dict[str, Any], *, logger: Any, cka_cb: Any
) -> dict[str, Any]:
    """The weights of both models (:func:`vvm.weights.load_or_train`); returns the first model's facts."""
    if models.other is not None:
        # the second model's weights first: CKA probes during the first model's training compare with it
        summary["compare"].update(
            load_or_train(models.other, models.other_cfg, dm, logger=None, callbacks=[])
        )
    return load_or_train(models.model, cfg, dm, logger=logger, callbacks=[cka_cb])


def cka_trainer(cfg: DictConfig, out_dir: Path, cka_cb: Any, logger: Any) -> pl.Trainer:
    """The Trainer of the CKA pass (``trainer.test``): ``cfg.trainer`` with the CKA callback and the logger."""
    # the datamodule's evaluation loaders deal whole batches to ranks themselves (vvm.data.batches)
    return trainer_factory(cfg)(
        use_distributed_sampler=False,
        logger=logger if logger else False,
        callbacks=[cka_cb],
        default_root_dir=str(out_dir),
        enable_checkpointing=False,
    )


def result_facts(final: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What result.json records about the final CKA pass."""
    res = final["result"]
    return {
        "n_samples": res.n_samples,
        "n_batches": res.n_batches,
        "n_layers": [len(res.layers_x), len(res.layers_y)],
        "layers_x": res.layers_x,
        "layers_y": res.layers_y,
        "undefined_layers": sorted(set(res.undefined_x + res.undefined_y)),
        "activation_dtype": res.activation_dtype,
        # cka.tf32 and what the pass's float32 convolutions and matmuls ran in (ieee | tf32)
        "cka_float32": final.get("float32"),
        "mean_cka": mean_offdiagonal(res.matrix.numpy()),
        "test_accuracy": float(metrics[0]["test/acc"]) if metrics and "test/acc" in metrics[0] else None,
        "files": {k: str(v) for k, v in final.get("paths", {}).items()},
    }


__all__ = [
    "cka_callback",
    "cka_trainer",
    "compare_config",
    "is_interrupt",
    "resume_command",
    "run",
    "summarise_config",
]
