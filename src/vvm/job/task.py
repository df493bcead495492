"""One job as Hydra runs it: the composed config turned into typed settings once (:func:`vvm.schema.to_settings`),
then :func:`vvm.pipeline.steps.run` on them.

Resuming. ``resume=true``: a job whose output dir already holds a complete result of the same config (see
:func:`completed_result`) is skipped; its result.json is returned with ``resumed: true``.

Failing jobs. Hydra's sweeper raises the first failed job's exception once a batch of jobs has returned, and then
``on_multirun_end`` never runs. So in multirun mode a job's exception is caught after :func:`vvm.pipeline.steps.run`
has recorded it in ``result.json`` (status ``failed``, the error and traceback), logged to the job's log, and
the job returns normally: the next job runs and the summary (:mod:`vvm.sweep`) lists the failure. A single run
(no ``-m``) re-raises, so it still exits non-zero. An interrupt (Ctrl-C, SLURM's kill) is not caught as a
failure: once result.json says ``interrupted`` and the log gives the resume command, the process exits with
status 130 (no traceback).

DDP. ``trainer=ddp`` in a local multirun: Lightning starts ranks 1.. by re-running the command line, which would
be the whole sweep; :func:`single_job_ddp_launch` makes it this job alone. Under ``hydra/launcher=slurm`` SLURM
starts one task per GPU and Lightning reads the ranks from SLURM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vvm.io import load_json, write_json
from vvm.schema import rename_config, to_settings
from vvm.settings import ConfigError, plain

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- the task
def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    """The Hydra task: the config as settings, then :func:`vvm.pipeline.steps.run`, unless ``resume=true`` finds the
    job done; in a multirun a failure (a bad setting too) is recorded and the sweep goes on."""
    from vvm.pipeline.steps import run

    try:
        job = to_settings(cfg)
    except ConfigError as e:
        if in_multirun():
            record_job_failure(
                e, model=OmegaConf.select(cfg, "model.name", default=None, throw_on_resolution_failure=False)
            )
            return None
        raise SystemExit(f"vvm: {e}") from None
    if job.resume:
        out_dir = Path(job.paths.output_dir)
        previous = completed_result(out_dir, plain(job))
        if previous is not None:
            log.info("resume: %s already has a complete result, skipping", out_dir)
            return {**previous, "resumed": True}
    try:
        if not in_multirun():
            return run(job, resume_command=resume_command())
        try:
            with single_job_ddp_launch():
                return run(job, resume_command=resume_command())
        except Exception as e:
            record_job_failure(e)
            return None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: result.json says interrupted, the log how to resume
        raise SystemExit(130) from None


def resume_command() -> str:
    """The command that takes an interrupted job up again: the same command line, in the same run directory (a
    training resumes from its ``<key>.last.ckpt``); in a multirun, ``python -m vvm.sweep resume <sweep dir>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # composed without Hydra's runtime
        return shlex.join(["python", "-m", "vvm", *sys.argv[1:]])
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return f"python -m vvm.sweep resume {shlex.quote(str(hc.sweep.dir))}"
    task = [str(o) for o in hc.overrides.task]
    run_dir = (
        []
        if any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)
        else [f"hydra.run.dir={hc.runtime.output_dir}"]
    )
    return shlex.join(["python", "-m", "vvm", *task, *[str(o) for o in hc.overrides.hydra], *run_dir])


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def record_job_failure(exc: BaseException, *, model: str | None = None) -> None:
    """Log a multirun job's failure; write a minimal failed result.json when the pipeline could not write one."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    log.error(
        "job failed, the sweep goes on (recorded in %s): %s: %s\n%s",
        out_dir / "result.json",
        type(exc).__name__,
        exc,
        "".join(traceback.format_exception(exc)),
    )
    if not (out_dir / "result.json").is_file():
        choices = HydraConfig.get().runtime.choices
        write_json(
            out_dir / "result.json",
            {
                "model": model or choices.get("model"),
                "init": choices.get("init"),
                "dataset": choices.get("dataset"),
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
                "output_dir": str(out_dir),
            },
        )


# ---------------------------------------------------------------------------------------------- DDP in a sweep
_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def single_job_ddp_launch() -> Iterator[None]:
    """Make Lightning's DDP launcher start this job's ranks, not the whole sweep again (multirun jobs only).

    Lightning starts ranks 1.. by re-running ``sys.argv`` with ``hydra.run.dir=<HydraConfig's run.dir>``; in a
    multirun that command is the sweep itself, so every rank would run every job (and its own summary). While the
    job runs, ``sys.argv`` is this job's own overrides (a single run) and ``run.dir`` its output dir. Afterwards
    the DDP state this process set up (process group, LOCAL_RANK, MASTER_PORT, ...) is cleared, so the next job
    starts fresh ranks. Processes started by a cluster (SLURM tasks, torchrun) are left alone.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    if "LOCAL_RANK" in os.environ or not HydraConfig.initialized():
        yield
        return
    hc = HydraConfig.get()
    argv, run_dir = list(sys.argv), hc.run.dir
    sys.argv = [argv[0], *[str(o) for o in hc.overrides.task]]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc):
            hc.run.dir = run_dir
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k in _DDP_ENV:
            os.environ.pop(k, None)


# ---------------------------------------------------------------------------------------------- resume
def completed_result(out_dir: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The result.json of a finished job in ``out_dir``, else None. Finished means what the sweep summary and the
    joint pass need (:func:`missing_pieces`): status ok, every result file it lists there and readable (cka.npz
    among them), and for weights vvm trained the checkpoint they were saved to.

    With ``config`` (the job's settings as plain values, :func:`vvm.settings.plain`, as result.json stores them),
    the result must also come from the same settings (see :func:`config_differences`): a sweep rerun into the
    same dir with other overrides recomputes instead of reusing another job's result.
    """
    out_dir = Path(out_dir)
    try:
        prev = load_json(out_dir / "result.json")
    except (OSError, ValueError):
        return None
    if not isinstance(prev, dict):  # [] or null: not a job's record, so the job runs again
        log.warning(
            "resume: %s holds no job's record (a JSON %s); computing it again",
            out_dir / "result.json",
            "null" if prev is None else type(prev).__name__,
        )
        return None
    if prev.get("status") != "ok":
        return None
    missing = missing_pieces(out_dir, prev)
    if missing:
        log.warning("resume: %s is not complete (%s); computing it again", out_dir, "; ".join(missing))
        return None
    if config is not None:
        diff = config_differences(rename_config(prev.get("config"), warn=False), config)  # old keys as new
        if diff:
            log.warning(
                "resume: %s holds a complete result of a different config (%s); computing it again",
                out_dir,
                ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else ""),
            )
            return None
    return prev


def _listed_files(files: Any) -> list[Path]:
    if isinstance(files, dict):
        return [p for v in files.values() for p in _listed_files(v)]
    if isinstance(files, (list, tuple)):
        return [p for v in files for p in _listed_files(v)]
    return [Path(files)] if isinstance(files, str) else []


def missing_pieces(out_dir: Path, result: dict[str, Any]) -> list[str]:
    """What a finished job's directory lacks: result files that are gone or unreadable (``.npz``: they must
    load), and the checkpoint of weights vvm trained (or took from its cache), which the joint pass rebuilds the
    model from. Empty when the job is complete."""
    from vvm.io import load_npz

    out = []
    files = {out_dir / "cka.npz", *_listed_files(result.get("files"))}
    for path in sorted(files):
        if not path.is_file():
            out.append(f"{path.name} is missing")
        elif path.suffix == ".npz":
            try:
                load_npz(path)
            except Exception as e:  # noqa: BLE001 - any file numpy cannot read is damage here
                out.append(f"{path.name} is unreadable ({type(e).__name__})")
    weights = str(result.get("weights") or "")
    ckpt = result.get("checkpoint")
    if weights.startswith(("trained", "cached checkpoint")) and ckpt and not Path(ckpt).is_file():
        out.append(f"the checkpoint its weights were trained into ({ckpt}) is gone")
    return out


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


__all__ = [
    "completed_result",
    "missing_pieces",
    "resume_command",
    "config_differences",
    "in_multirun",
    "record_job_failure",
    "run_job",
    "single_job_ddp_launch",
]
