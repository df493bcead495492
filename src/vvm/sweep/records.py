"""A sweep's jobs read back from their files alone (result.json, cka.npz, Hydra's ``.hydra/`` record): what
:mod:`vvm.sweep` summarises. A job that died before writing anything is still listed, from Hydra's record."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from vvm.io import InputError, UnreadableFile, load_json, load_npz

if TYPE_CHECKING:
    from vvm.settings.job import JobSettings

# overrides that say which job it is without being a "variant" of the sweep
_IDENTITY_KEYS = {"model", "init", "model.name", "init.name", "compare", "compare_init", "resume"}


def canonical_family(family: str | None, model: str | None = None) -> str:
    """The summary's row for a job: the model's own ``family`` (from result.json) by its first word
    (``lambda_resnet`` -> ``lambda``), else the family of the model's name (a job that failed before building
    it)."""
    return family.lower().split("_")[0] if family else model_family(model)


def model_family(name: str | None) -> str:
    """The summary's row for a model name: its family in the registry (see :func:`vvm.models.family_of`: resnet
    for r18 and resnet50, lambda for lambda_r26, vit for vit_l32 and deit_small, else other)."""
    from vvm.models import family_of  # the registry (torch): not for a command's --help

    return canonical_family(family_of(name))


# ---------------------------------------------------------------------------------------------- job records
@dataclass
class JobRecord:
    """What one job left in its directory, read back from the files alone."""

    job: str
    output_dir: Path
    model: str | None = None
    family: str = "other"
    init: str | None = None
    compare: str | None = None  # cross-model CKA (compare=<model>): "<model> · <init>" of the columns
    dataset: str | None = None
    status: str = (
        "incomplete"  # ok | failed | incomplete (no result: killed, still running, or never finished)
    )
    error: str | None = None
    seconds: float | None = None
    samples: int | None = None
    accuracy: float | None = None
    mean_cka: float | None = None
    kernel: str | None = None
    seed: int | None = None
    n_batches: int | None = None
    overrides: list[str] = field(default_factory=list)
    variant: str = ""
    matrix: Any = None
    layers_x: list[str] = field(default_factory=list)
    layers_y: list[str] = field(default_factory=list)
    logger: dict[str, Any] | None = None  # the job's resolved logger config (W&B project, group, mode)
    # result.json's `measures`: each similarity measure's mean off-diagonal value (cka only for older results)
    measures: dict[str, float | None] = field(default_factory=dict)
    matrices: dict[str, Any] = field(default_factory=dict)  # the matrices of the measures besides cka
    analyses: dict[str, Any] = field(default_factory=dict)  # result.json's per-layer analyses entries

    @property
    def layers(self) -> int | str | None:
        if not self.layers_x:
            return None
        nx, ny = len(self.layers_x), len(self.layers_y)
        return nx if nx == ny else f"{nx}x{ny}"

    def row(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "model": self.model,
            "family": self.family,
            "init": self.init,
            "compare": self.compare,
            "dataset": self.dataset,
            "variant": self.variant,
            "status": self.status,
            "layers": self.layers,
            "samples": self.samples,
            "accuracy": self.accuracy,
            "mean_cka": self.mean_cka,
            **{f"mean_{k}": _number(v) for k, v in self.measures.items() if k != "cka"},
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "error": " ".join(self.error.split()) if self.error else None,  # one line per job
            "output_dir": str(self.output_dir),
        }


def job_sort_key(rel: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(rel).parts)


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a sweep: those holding Hydra's ``.hydra/`` record or a ``result.json``."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent for p in sweep_dir.glob("**/.hydra") if p.is_dir()}
    found |= {p.parent for p in sweep_dir.glob("**/result.json")}
    found = {d for d in found if d != sweep_dir and ".submitit" not in d.relative_to(sweep_dir).parts}
    return sorted(found, key=lambda d: job_sort_key(str(d.relative_to(sweep_dir))))


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return None


def read_job(sweep_dir: str | Path, job_dir: str | Path) -> JobRecord:
    """One job's record from its files: result.json and cka.npz, else Hydra's ``.hydra/`` files."""
    job_dir = Path(job_dir)
    rec = JobRecord(job=str(job_dir.relative_to(sweep_dir)), output_dir=job_dir)
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    rec.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []

    # what the job was, from Hydra's record (there even when the job died before writing anything)
    hydra_cfg = _read_yaml(job_dir / ".hydra" / "hydra.yaml")
    choices = _mapping(_mapping(_mapping(hydra_cfg).get("hydra")).get("runtime")).get("choices")
    choices = {k: v for k, v in _mapping(choices).items() if isinstance(v, str)}
    task_cfg = _mapping(_read_yaml(job_dir / ".hydra" / "config.yaml"))
    given = _override_items(rec.overrides)  # the last word: the job's command line
    rec.model = (
        _literal(_mapping(task_cfg.get("model")).get("name")) or choices.get("model") or given.get("model")
    )
    rec.init = (
        _literal(_mapping(task_cfg.get("init")).get("name")) or choices.get("init") or given.get("init")
    )
    rec.dataset = choices.get("dataset") or given.get("dataset")

    result: dict[str, Any] | None = None
    res_path = job_dir / "result.json"
    if res_path.is_file():
        try:
            result = load_json(res_path)
            if not isinstance(result, dict):
                kind = "null" if result is None else type(result).__name__
                rec.error = f"result.json holds a JSON {kind}, not a job's mapping: run the job again"
                result = None
        except (OSError, ValueError) as e:
            rec.error = f"result.json is unreadable: {e}"
    elif rec.error is None:
        rec.error = "no result.json: the job was killed, is still running, or never started its pipeline"

    if result is not None:
        _read_result(rec, result)
    else:
        rec.family = model_family(rec.model)
        if task_cfg.get("logger"):
            rec.logger = task_cfg.get("logger")
    if rec.status == "ok":
        _read_matrices(rec, job_dir)
    return rec


def _read_result(rec: JobRecord, result: dict[str, Any]) -> None:
    """What result.json says about the job, into ``rec``."""
    rec.model = result.get("model") or rec.model
    rec.init = result.get("init") or rec.init
    rec.dataset = result.get("dataset") or rec.dataset
    rec.status = str(result.get("status") or "incomplete")
    rec.error = result.get("error")
    secs = result.get("seconds")
    rec.seconds = secs.get("total") if isinstance(secs, dict) else secs
    rec.samples = result.get("n_samples")
    rec.accuracy = result.get("test_accuracy")
    mean = result.get("mean_cka")
    rec.mean_cka = None if mean is None or (isinstance(mean, float) and math.isnan(mean)) else mean
    rec.kernel = result.get("kernel")
    rec.seed, rec.n_batches = result.get("seed"), result.get("n_batches")
    measures = result.get("measures")
    rec.measures = dict(measures) if isinstance(measures, dict) and measures else {"cka": rec.mean_cka}
    other = result.get("compare")
    if isinstance(other, dict):
        rec.compare = f"{other.get('model')} · {other.get('init')}"
    cfg = _mapping(result.get("config"))
    rec.logger = cfg.get("logger") if isinstance(cfg.get("logger"), dict) else None
    rec.family = canonical_family(result.get("family"), rec.model)
    rec.analyses = result.get("analyses") if isinstance(result.get("analyses"), dict) else {}
    if rec.status == "running":
        rec.status, rec.error = "incomplete", rec.error or "result.json says the job is still running"
    if rec.status != "ok" and not rec.error:  # never "incomplete: None"
        rec.error = f"result.json says {rec.status} and records no error: run the job again"


def _read_matrices(rec: JobRecord, job_dir: Path) -> None:
    """cka.npz (when the job measured CKA) and every other measure's ``<name>.npz``; a missing or unreadable
    file (truncated, damaged, pickled objects, a key missing) makes the job incomplete, with a note."""
    for name in ["cka"] * ("cka" in rec.measures) + [m for m in rec.measures if m != "cka"]:
        try:
            z = load_npz(job_dir / f"{name}.npz")
            if name == "cka":
                rec.matrix = z["cka"]
            else:
                rec.matrices[name] = z["matrix"]
            if name == "cka" or not rec.layers_x:
                rec.layers_x, rec.layers_y = [str(s) for s in z["layers_x"]], [str(s) for s in z["layers_y"]]
            if rec.samples is None and "n_samples" in z:
                rec.samples = int(z["n_samples"])
        except (UnreadableFile, KeyError) as e:
            rec.status = "incomplete"
            why = f"it holds no {e}" if isinstance(e, KeyError) else e
            rec.error = f"{name}.npz is missing or unreadable: {why}"
            return


def _number(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def measured(j: JobRecord, measure: str) -> tuple[Any, float | None, str]:
    """A job's matrix, mean off-diagonal value and label for ``measure``."""
    if measure == "cka":
        return j.matrix, j.mean_cka, "CKA"
    from vvm.cka.measures import MEASURES  # the engine (torch): not for a command's --help

    label = MEASURES[measure].label if measure in MEASURES else measure
    mean = j.measures.get(measure)
    return j.matrices.get(measure), None if mean is None or mean != mean else mean, label


def measures_of(jobs: Sequence[JobRecord]) -> list[str]:
    """The measures besides CKA that any of the sweep's jobs computed, in the order they name them."""
    return list(dict.fromkeys(m for j in jobs for m in j.measures if m != "cka"))


def summary_columns(jobs: Sequence[JobRecord], columns: Sequence[str]) -> list[str]:
    """summary.csv's ``columns``, with ``mean_<measure>`` after ``mean_cka`` for the other measures the jobs
    computed."""
    cols = list(columns)
    at = cols.index("mean_cka") + 1
    return cols[:at] + [f"mean_{m}" for m in measures_of(jobs)] + cols[at:]


def analysis_records(jobs: Sequence[JobRecord], kind: str) -> list[dict[str, Any]]:
    """The records of analysis ``kind`` (any registered: erf, attention, probe, ...) for the sweep's figure
    (:func:`vvm.plots.analyses_sweep.sweep_figure`): per job that finished ok and ran it, ``model``, ``family``,
    ``init`` and the arrays of its ``<kind>.npz`` (none where it did not apply: attention for a CNN). A timm
    model is coloured by the family of its architecture's name (vit_tiny_patch16_224: vit)."""
    out = []
    for j in jobs:
        if j.status != "ok" or kind not in j.analyses:
            continue
        named = model_family(j.model)
        rec: dict[str, Any] = {
            "model": j.model,
            "family": named if j.family == "timm" and named != "other" else j.family,
            "init": j.init,
        }
        path = j.output_dir / f"{kind}.npz"
        with contextlib.suppress(UnreadableFile):  # missing or damaged: the figure names it in a footnote
            rec.update(load_npz(path))
        out.append(rec)
    return out


def _mapping(v: Any) -> dict:
    """``v`` when it is a mapping, else an empty one (a file holding a list or a string where a mapping goes)."""
    return v if isinstance(v, dict) else {}


def _literal(v: Any) -> str | None:
    """A config value as written, unless it is an interpolation (then the caller falls back)."""
    return None if v is None or (isinstance(v, str) and "${" in v) else str(v)


def _override_items(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        if "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def collect_jobs(sweep_dir: str | Path) -> list[JobRecord]:
    """Every job of a sweep directory, in job order, with ``variant`` naming the swept values that are not the
    model or the init (say ``dataset=digits`` when the sweep also sweeps datasets)."""
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(sweep_dir, d) for d in job_dirs(sweep_dir)]
    items = [_override_items(j.overrides) for j in jobs]
    keys = sorted({k for it in items for k in it} - _IDENTITY_KEYS)
    varying = [k for k in keys if len({it.get(k) for it in items}) > 1]
    for j, it in zip(jobs, items):
        j.variant = ", ".join(f"{k}={it[k]}" for k in varying if k in it)
    return jobs


# ---------------------------------------------------------------------------------------------- the joint pass's jobs
@dataclass
class JointJob:
    """A finished job of the sweep, as the joint pass uses it."""

    job: str
    tag: str
    model: str
    init: str
    family: str
    settings: JobSettings
    result: dict[str, Any]


# ---------------------------------------------------------------------------------------------- the jobs
def read_jobs(sweep_dir: str | Path, only: Sequence[str] | None = None) -> tuple[list[JointJob], list[str]]:
    """The sweep's finished jobs (``only``: these job names) with unique tags, and a note per skipped job."""
    from vvm.schema import from_record

    sweep_dir = Path(sweep_dir)
    jobs, notes = [], []
    for d in sweep_jobs(sweep_dir, only):
        rel = str(d.relative_to(sweep_dir))
        rec = read_job(sweep_dir, d)
        if rec.status != "ok":
            error = " ".join(str(rec.error or "no error recorded").split())[:300]
            notes.append(f"job {rel} ({rec.model}, {rec.init}) skipped: it is {rec.status}: {error}")
            continue
        result = load_json(d / "result.json")
        config = result.get("config")
        if not isinstance(config, dict) or "model" not in config:
            notes.append(f"job {rel} ({rec.model}, {rec.init}) skipped: its result.json holds no config")
            continue
        try:
            settings = from_record(config, str(result.get("dataset")))
        except Exception as e:  # noqa: BLE001 - a config this vvm cannot read is a note, not the end
            notes.append(f"job {rel} ({rec.model}, {rec.init}) skipped: its stored config does not read: {e}")
            continue
        tag = str(result.get("tag") or f"{rec.model}-{rec.init}")
        jobs.append(JointJob(rel, tag, str(rec.model), str(rec.init), rec.family, settings, result))
    unique_tags(jobs)
    return jobs, notes


def sweep_jobs(sweep_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    """The job directories of ``sweep_dir`` (``only``: these jobs); :class:`InputError` when it holds none (a job's
    own directory, an empty one) or ``only`` names a job it does not hold."""
    dirs = job_dirs(sweep_dir)
    if not dirs:
        if (sweep_dir / "result.json").is_file() or (sweep_dir / ".hydra").is_dir():
            raise InputError(
                f"{sweep_dir} is one job's directory, not a sweep's: give the sweep directory that holds the jobs "
                f"({sweep_dir.parent}, multirun/<date>/<time>)"
            )
        raise InputError(
            f"{sweep_dir} holds no jobs (no <job>/result.json or <job>/.hydra): give a sweep directory "
            "(multirun/<date>/<time>)"
        )
    names = [str(d.relative_to(sweep_dir)) for d in dirs]
    unknown = [j for j in dict.fromkeys(only or ()) if j not in names]
    if unknown:
        raise InputError(
            f"--jobs: {sweep_dir} holds no job {', '.join(unknown)}; its jobs are {', '.join(names)}"
        )
    return [d for d, n in zip(dirs, names) if only is None or n in only]


def unique_tags(jobs: list[JointJob]) -> None:
    """Drop the dataset suffix every tag shares, add the job number to tags that repeat; no ``/``."""
    suffixes = {f"-{j.result.get('dataset')}" for j in jobs}
    if len(suffixes) == 1 and all(j.tag.endswith(s) and j.tag != s for j in jobs for s in suffixes):
        for j in jobs:
            j.tag = j.tag[: -len(next(iter(suffixes)))]
    counts = Counter(j.tag for j in jobs)
    for j in jobs:
        j.tag = (f"{j.tag}-{j.job}" if counts[j.tag] > 1 else j.tag).replace("/", "_")


__all__ = [
    "JobRecord",
    "JointJob",
    "analysis_records",
    "canonical_family",
    "collect_jobs",
    "job_dirs",
    "job_sort_key",
    "measured",
    "measures_of",
    "model_family",
    "read_job",
    "read_jobs",
    "summary_columns",
    "sweep_jobs",
    "unique_tags",
]
