"""A job's W&B run as a W&B user expects it: online when this machine is logged in to W&B and W&B answers, offline
otherwise (and the job's report says which, and why); the sweep's name as every job's group; per-epoch values
plotted against ``epoch``; the job's result files as an artifact; where the run is (its URL, or its folder and the
``wandb sync`` command).

``logger.mode``: ``auto`` (the default, unless ``$WANDB_MODE`` says otherwise) is online when W&B has an API key
(``$WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host, which ``wandb login`` writes) and the host answers
within :data:`REACH_TIMEOUT_S` seconds, else offline; ``online`` tries online and falls back to offline with a
warning; ``offline`` and ``disabled`` are W&B's own.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vvm.io import host_reachable

DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 3.0  # how long `auto` waits for the W&B host before it logs offline


@dataclass(frozen=True)
class ModeChoice:
    """The mode a job's W&B run starts in and why (for the job's report)."""

    mode: str  # online | offline | disabled
    why: str


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_api_key(url: str | None = None) -> bool:
    """Whether W&B has an API key for ``url``'s host: ``$WANDB_API_KEY``, or the netrc file (``$NETRC``, else
    ``~/.netrc``) has an entry for the host with a password (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(url or base_url()).hostname or ""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def choose_mode(requested: str | None) -> ModeChoice:
    """``requested`` (``logger.mode``; empty: ``$WANDB_MODE``, else ``auto``) made a decision. ``auto``: online
    with an API key and a host that answers within :data:`REACH_TIMEOUT_S`, else offline; ``online`` is kept
    (the logger still falls back to offline when the run cannot start)."""
    mode = str(requested or os.environ.get("WANDB_MODE") or "auto").lower()
    if mode in ("offline", "dryrun"):
        return ModeChoice("offline", "logger.mode/WANDB_MODE is offline")
    if mode == "disabled":
        return ModeChoice("disabled", "logger.mode/WANDB_MODE is disabled")
    if mode == "online":
        return ModeChoice("online", "logger.mode/WANDB_MODE is online")
    if mode != "auto":
        raise ValueError(f"logger.mode={mode!r}: use auto, online, offline or disabled")
    if not has_api_key():
        return ModeChoice("offline", "no W&B API key here: `wandb login` to log online")
    url = base_url()
    if not host_reachable(url, timeout=REACH_TIMEOUT_S):
        return ModeChoice(
            "offline", f"W&B has an API key but {url} did not answer within {REACH_TIMEOUT_S:g} s"
        )
    return ModeChoice("online", f"W&B has an API key and {url} answers")


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's jobs, its summary run and its joint pass: ``sweep-<date>_<time>`` from
    ``multirun/<date>/<time>`` (the sweep directory's last two parts)."""
    parts = Path(sweep_dir).resolve().parts
    return "sweep-" + ("_".join(parts[-2:]) if len(parts) >= 2 else parts[-1])


def define_epoch_metrics(run: Any, prefixes: list[str]) -> None:
    """Plot the per-epoch values (``<prefix>/*``: validation, the CKA passes during training) against ``epoch``,
    the number of completed training epochs, so W&B's line plots and step slider align them."""
    run.define_metric("epoch")
    for prefix in prefixes:
        run.define_metric(f"{prefix}/*", step_metric="epoch")


def run_facts(run: Any) -> dict[str, Any]:
    """Where a W&B run is: its mode, folder, and its URL (online) or the ``wandb sync`` command (offline)."""
    folder = str(Path(run.dir).parent)
    if run.offline:
        return {"mode": "offline", "dir": folder, "sync": f"wandb sync {folder}"}
    return {"mode": "online", "dir": folder, "url": run.url}


def log_result_files(run: Any, name: str, files: list[Path], metadata: dict[str, Any]) -> None:
    """The job's result files (``cka.npz``, every measure's npz, ``result.json``) as one W&B artifact of type
    ``results`` named ``name`` (W&B versions artifacts of the same name: reruns of a job are v0, v1, ...)."""
    import wandb

    artifact = wandb.Artifact(name, type="results", metadata=metadata)
    for path in files:
        artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact)


__all__ = [
    "ModeChoice",
    "choose_mode",
    "define_epoch_metrics",
    "has_api_key",
    "log_result_files",
    "run_facts",
    "sweep_group",
]
