"""The end of a job: where its W&B run is, ``result.json``, the logger closed (the result files as a W&B artifact),
and one short report of what the job did, on the console and in the job's log (``vvm.log``, Hydra's job log).

The report names the run directory and its files, each measure's mean off-diagonal value with the number of
examples it came from, where the weights came from (random, trained here, a cached or given checkpoint, published
weights), the test accuracy when the pass measured one, and where the W&B run is: its URL online; offline, its
folder and the exact ``wandb sync`` command, with the reason it is offline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vvm.io import is_rank_zero, write_json
from vvm.loggers.logger import finish_logger, where_logged

log = logging.getLogger(__name__)

RESULT_KEYS = ("npz",)  # which of a measure's files are results (the figures are not)


def wandb_facts(logger: Any) -> dict[str, Any]:
    """Where the job's W&B run is, for result.json (``{"wandb": ...}``); empty for other loggers (and on ranks
    other than 0). A logger that cannot say where it is gives the error, never a lost result.json."""
    try:
        where = where_logged(logger) if logger else None
    except Exception as e:  # noqa: BLE001 - a logger that cannot say where it is must not lose result.json
        where = {"error": f"{type(e).__name__}: {e}"}
    return {} if where is None else {"wandb": where}


def close_job(out_dir: Path, summary: dict[str, Any], logger: Any) -> None:
    """Write result.json (``summary``, where the W&B run is among its facts: :func:`wandb_facts`), finish the
    logger with the result files, then log the report (rank 0). Called once, at the end of every job, also after
    a failure."""
    write_result(out_dir, summary)
    if logger:
        finish_logger(logger, summary, result_files(out_dir, summary))
    if is_rank_zero():
        log.info("%s", job_report(summary))


def write_result(out_dir: Path, summary: dict[str, Any]) -> None:
    if not is_rank_zero():
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "result.json", summary)
    except OSError as e:  # an unwritable run directory: the error that says so is already on its way
        log.error("could not write %s: %s", out_dir / "result.json", e)


def measure_npz(summary: dict[str, Any]) -> dict[str, Path]:
    """Each measure's result file: ``cka.npz`` and the ``<measure>.npz`` of the others (``measure_files``)."""
    out = {}
    if (summary.get("files") or {}).get("npz"):
        out["cka"] = Path(summary["files"]["npz"])
    for name, files in (summary.get("measure_files") or {}).items():
        if files.get("npz"):
            out[name] = Path(files["npz"])
    return out


def result_files(out_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """The files a job's artifact holds: every measure's npz (``rdms.npz`` too), the analyses' npz and
    result.json (those that exist: a failed job's artifact holds what it wrote)."""
    extra = [
        Path(f)
        for files in (summary.get("measure_files") or {}).values()
        for f in (files or {}).values()
        if str(f).endswith(".npz")
    ]
    analyses = [
        Path(e["files"]["npz"])
        for e in (summary.get("analyses") or {}).values()
        if isinstance(e, dict) and (e.get("files") or {}).get("npz")
    ]
    files = [*measure_npz(summary).values(), *extra, *analyses, out_dir / "result.json"]
    return [p for p in dict.fromkeys(files) if p.is_file()]


def _sample_size(path: Path | None, default: Any) -> str:
    """How many examples a measure's value came from, from its file: ``n = N examples``, and for a measure
    computed on pools of a declared size (RSA, kNN) the pools, the declared n and the chance level."""
    facts: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                keys = ("n_samples", "pool_size", "n_pools", "n_declared", "chance")
                facts = {k: z[k].item() for k in keys if k in z.files}
        except Exception:  # noqa: BLE001 - the report never fails a job: the summary's count instead
            facts = {}
    text = f"n = {facts.get('n_samples', default)} examples"
    if "pool_size" in facts and "n_pools" in facts:
        pools = int(facts["n_pools"])
        text += f" in {pools} pool{'s' if pools != 1 else ''} of {int(facts['pool_size'])}"
        if "n_declared" in facts and int(facts["n_declared"]) != int(facts["pool_size"]):
            text += f" (declared {int(facts['n_declared'])})"
    if facts.get("chance") is not None:
        text += f"; chance {float(facts['chance']):.3f}"
    return text


def _files_line(out_dir: Path) -> str:
    if not out_dir.is_dir():
        return "(none)"
    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(out_dir.iterdir())]
    return " ".join(n for n in names if not n.startswith("."))


def _wandb_rows(where: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not where:
        return []
    if "error" in where:
        return [("W&B", f"could not tell where the run is ({where['error']})")]
    why = f" ({where['why']})" if where.get("why") else ""
    if where.get("mode") == "online":
        return [("W&B", f"online{why}"), ("W&B run", str(where.get("url")))]
    if where.get("mode") == "disabled":
        return [("W&B", f"disabled{why}")]
    return [
        ("W&B", f"offline{why}"),
        ("W&B run", str(where.get("dir"))),
        ("upload with", str(where.get("sync"))),
    ]


def _weights_line(summary: dict[str, Any]) -> str | None:
    weights = summary.get("weights")
    if weights is None:
        return None
    line = str(weights)
    if summary.get("trained") and summary.get("train_seconds") is not None:
        line += f" ({float(summary['train_seconds']):.0f} s)"
    other = summary.get("compare") or {}
    if other.get("weights"):
        line += f"; compare={other.get('model')}: {other['weights']}"
    return line


def _measure_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    files = measure_npz(summary)
    rows = []
    for name, mean in (summary.get("measures") or {}).items():
        n = _sample_size(files.get(name), summary.get("n_samples"))
        value = "undefined (NaN)" if mean is None or mean != mean else f"{float(mean):.4f}"
        rows.append((name, f"mean off-diagonal {value} ({n})"))
    return rows


def job_report(summary: dict[str, Any]) -> str:
    """The report of a finished (or failed, or interrupted) job, from what result.json holds."""
    out_dir = Path(str(summary.get("output_dir", ".")))
    seconds = (summary.get("seconds") or {}).get("total")
    took = f" in {float(seconds):.1f} s" if seconds is not None else ""
    what = f"{summary.get('model')} (init={summary.get('init')}, dataset={summary.get('dataset')}, "
    what += f"seed {summary.get('seed')})"
    if summary.get("compare"):
        what += f" vs {summary['compare'].get('model')} (init={summary['compare'].get('init')})"
    rows: list[tuple[str, str | None]] = [
        ("run directory", str(out_dir)),
        ("files", _files_line(out_dir)),
        ("weights", _weights_line(summary)),
    ]
    if summary.get("test_accuracy") is not None:
        rows.append(("test accuracy", f"{100 * float(summary['test_accuracy']):.1f}%"))
    rows += _measure_lines(summary)
    for name, entry in (summary.get("analyses") or {}).items():
        if isinstance(entry, dict):
            rows.append((name, entry.get("note") or f"{entry.get('seconds', 0):.1f} s"))
    rows += _wandb_rows(summary.get("wandb"))
    if summary.get("status") != "ok" and summary.get("error"):
        rows.append(("error", str(summary["error"])))
    if summary.get("resume"):
        rows.append(("resume with", str(summary["resume"])))
    width = max(len(k) for k, v in rows if v is not None)
    lines = [f"vvm: job {summary.get('status')}{took}: {what}"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows if v is not None]
    return "\n".join(lines)


__all__ = ["close_job", "job_report", "measure_npz", "result_files", "wandb_facts", "write_result"]
