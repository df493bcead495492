"""``python -m vvm.joint <sweep_dir>``: CKA between every layer of every finished job's model, in one pass.

Each finished job's model is rebuilt from the config stored in its result.json, with the weights that job used
(:func:`vvm.weights.load_or_train`: random seeded init, ``init.checkpoint``, published weights, or the cached
checkpoint of its training; the joint pass never trains: a job whose checkpoint is gone is skipped with a note).
Failed and unfinished jobs are skipped with a note that names them. Then one pass over the data of the first
job (its dataset, seed and CKA settings; ``--layers``, ``--batch-size``, ``--max-samples``, ``--seed`` override
them) with :class:`vvm.cka.JointCKA` writes, into ``<sweep dir>/joint/`` (or ``--out``):

- ``joint.npz``: ``cka`` (float64 ΣL x ΣL), ``cka_stderr``, ``layers`` (``<job tag>/<layer>``), ``models`` (job
  tags), ``model_index``, ``n_samples``, ``n_batches`` and what each model was (``jobs``, ``model_names``,
  ``families``, ``inits``);
- ``joint.png/pdf`` (the block matrix), ``pairs/<A>__<B>.png`` (every cross-model block),
  ``correspondence.png/pdf`` (best-matching layer of B for each layer of A, on relative depth);
- ``joint.csv``: one row per pair of models: the block's mean CKA, its mean of row maxima and, for two models
  of one architecture, Kornblith et al. (2019)'s layer-identification accuracy, with ties (a layer counts as
  identified when within one standard error of its row's maximum: :mod:`vvm.cka.correspondence`), the layers
  counted and the ties; ``includes_classifier`` says whether the classifier is among the layers (Kornblith et
  al. left the logits out);
- with ``--logger wandb`` (or ``auto`` when the jobs logged to W&B): the figures and the table in a W&B run.

Job tags are the jobs' ``tag`` less the dataset they share (``r18-pretrained``), with the job number added where
tags repeat (``r18-pretrained-0``, ``-1``, ``-2`` for ``seed=0,1,2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vvm.records import JointJob, read_jobs, sweep_jobs

if TYPE_CHECKING:  # the heavy imports (torch, the engine) wait for the work: --help answers at once
    from vvm.cka.joint import JointResult
    from vvm.settings import JobSettings

log = logging.getLogger(__name__)


def rebuild_model(job: JointJob) -> tuple[Any, str | None]:
    """The job's model with the weights it used, or ``(None, note)``; never trains (no ``fit``): a trained
    model comes from its cached checkpoint, else from the file the job recorded."""
    from vvm.pipeline import build_datamodule, build_model, checkpoint_cache
    from vvm.weights import WeightsUnavailable, load_or_train

    s = job.settings
    try:
        dm = build_datamodule(s)
        model = build_model(s.model, dm)
        load_or_train(
            model, s.model, s.init, dataset_name=dm.name, cache=checkpoint_cache(s, s.model),
            known_checkpoint=job.result.get("checkpoint"),
        )  # fmt: skip
    except WeightsUnavailable as e:
        return None, f"job {job.job} ({job.tag}) skipped: {e} (the joint pass never trains)"
    except Exception as e:  # a model that cannot be rebuilt (offline weights, a missing file) is a note
        return (
            None,
            f"job {job.job} ({job.tag}) skipped: its model could not be rebuilt: {type(e).__name__}: {e}",
        )
    return model, None


# ---------------------------------------------------------------------------------------------- the pass
def pass_settings(jobs: list[JointJob], overrides: dict[str, Any]) -> tuple[JobSettings, list[str]]:
    """The first job's settings with the command line's overrides; a note when the jobs' data differ."""
    from vvm.settings import plain

    first = jobs[0].settings
    notes = []
    differ = [j.job for j in jobs[1:] if plain(j.settings.dataset) != plain(first.dataset)]
    if differ:
        notes.append(
            f"jobs {', '.join(differ)} ran on other data settings; the joint pass uses job {jobs[0].job}'s"
        )
    cka = {k: overrides[k] for k in ("batch_size", "max_samples", "layers") if overrides.get(k) is not None}
    seed = overrides.get("seed")
    return dataclasses.replace(
        first, cka=dataclasses.replace(first.cka, **cka), seed=first.seed if seed is None else int(seed)
    ), notes


def parse_layers(text: str | None) -> str | list[str] | None:
    """``blocks`` (a preset) or ``stem,layer1.*,fc`` (names and globs)."""
    from vvm.cka.presets import PRESETS

    if text is None or text in PRESETS:
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def run_pass(
    models: dict[str, Any], settings: JobSettings, device: str, *, progress: bool = True
) -> tuple[JointResult, Any]:
    """One pass of every model over the CKA batches of ``settings``' dataset (the EvalBatches plan)."""
    from tqdm import tqdm

    from vvm.cka.joint import JointCKA, move_models
    from vvm.pipeline import build_datamodule

    dm = build_datamodule(settings)
    batches = dm.cka_batches()
    move_models(models, device)
    metric = JointCKA(
        models, settings.cka.layer_spec(), max_batches=len(batches.plan), **settings.cka.engine_options()
    ).to(device)
    loader = dm.eval_loader(batches, device=device)  # the datamodule's workers; pinned memory for a GPU
    with metric.track():
        for i, (x, _) in enumerate(tqdm(loader, total=len(batches), desc="joint CKA", disable=not progress)):
            batch_id, padding = batches.batch_info(i)
            metric.recorder.set_next_batch_id(batch_id)
            if padding:
                metric.recorder.mask_next_batch()
            metric.feed(x.to(device, non_blocking=True))
    return metric.compute(), batches


# ---------------------------------------------------------------------------------------------- the files
def pair_rows(
    res: JointResult, jobs: list[JointJob], heads: dict[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """One row per pair of models (A before B in job order); ``heads``: each model's classifier module name."""
    from vvm.cka.correspondence import TOLERANCE, Identification, identification, mean_row_max, records

    by_tag = {j.tag: j for j in jobs}
    rows = []
    for a_i, a in enumerate(res.models):
        for b in res.models[a_i + 1 :]:
            ja, jb = by_tag[a], by_tag[b]
            block = res.block(a, b).numpy()
            same = ja.model == jb.model
            ident = (
                identification(block, res.layers_of(a), res.layers_of(b), res.block(a, b, "stderr").numpy())
                if same
                else Identification(float("nan"), 0, 0, 0)
            )
            rows.append({
                "model_a": a, "model_b": b, "job_a": ja.job, "job_b": jb.job, "arch_a": ja.model,
                "arch_b": jb.model, "family_a": ja.family, "family_b": jb.family, "init_a": ja.init,
                "init_b": jb.init, "layers_a": block.shape[0], "layers_b": block.shape[1],
                "mean_cka": float(np.nanmean(block)) if not np.isnan(block).all() else None,
                "mean_row_max": mean_row_max(block), "layer_identification": ident.accuracy,
                "identification_layers": ident.layers, "identification_ties": ident.ties,
                "identification_tolerance": TOLERANCE if same else "",
                "includes_classifier": None if heads is None else any(
                    records(res.layers_of(m), heads.get(m)) for m in (a, b)),
            })  # fmt: skip
    return rows


def correspondence_panels(res: JointResult, jobs: list[JointJob]) -> list[Any]:
    """One panel per family pair; a curve per pair of models, A the one of the earlier family."""
    from vvm.cka.joint import best_matches
    from vvm.plots.joint import CorrespondencePanel, Curve
    from vvm.sweep import FAMILY_ORDER

    by_tag = {j.tag: j for j in jobs}
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    panels: dict[tuple[str, str], CorrespondencePanel] = {}
    for a_i, a in enumerate(res.models):
        for b in res.models[a_i + 1 :]:
            if rank.get(by_tag[b].family, 99) < rank.get(by_tag[a].family, 99):
                a, b = b, a
            fa, fb = by_tag[a].family, by_tag[b].family
            panel = panels.setdefault((fa, fb), CorrespondencePanel(
                f"{fa} vs {fb}", f"layer of A ({fa}), relative depth", f"best match in B ({fb}), relative depth"))  # fmt: skip
            block = res.block(a, b).numpy()
            best = best_matches(block)
            ok = best >= 0
            x = np.arange(block.shape[0]) / max(block.shape[0] - 1, 1)
            inits = {by_tag[a].init, by_tag[b].init}
            kind = inits.pop() if len(inits) == 1 else "mixed"
            panel.curves.append(Curve(f"{a} vs {b}", x[ok], best[ok] / max(block.shape[1] - 1, 1), kind))
    return list(panels.values())


def write_outputs(
    res: JointResult,
    jobs: list[JointJob],
    out: Path,
    *,
    title: str,
    extra: dict[str, Any],
    heads: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """joint.npz, joint.csv, joint.png/pdf, pairs/<A>__<B>.png, correspondence.png/pdf."""
    import pandas as pd

    from vvm.io import write_bytes, write_npz
    from vvm.plots.heatmap import heatmap_figure, save_figure
    from vvm.plots.joint import correspondence_figure, joint_figure

    by_tag = {j.tag: j for j in jobs}
    files: dict[str, Any] = {"npz": write_npz(
        out / "joint.npz", cka=res.matrix.numpy(), cka_stderr=res.stderr.numpy(), layers=np.array(res.layers_x),
        models=np.array(res.models), model_index=res.model_index.numpy(), n_samples=res.n_samples,
        n_batches=res.n_batches, hsic_diag=res.hsic_xx.numpy(), kernel=res.kernel, estimator=res.estimator,
        jobs=np.array([by_tag[m].job for m in res.models]), model_names=np.array([by_tag[m].model for m in res.models]),
        families=np.array([by_tag[m].family for m in res.models]), inits=np.array([by_tag[m].init for m in res.models]),
        **extra,
    )}  # fmt: skip
    table = pd.DataFrame(pair_rows(res, jobs, heads))
    files["csv"] = write_bytes(out / "joint.csv", table.to_csv(index=False).encode())
    files["png"], files["pdf"] = save_figure(
        joint_figure(res.matrix.numpy(), res.models, res.model_index.numpy(), title=title), out / "joint"
    )
    files["pairs"] = []
    for a_i, a in enumerate(res.models):
        for b in res.models[a_i + 1 :]:
            fig = heatmap_figure(
                res.block(a, b).numpy(),
                res.layers_of(a),
                res.layers_of(b),
                title=f"{a} vs {b}",
                xlabel=b,
                ylabel=a,
            )
            files["pairs"].append(save_figure(fig, out / "pairs" / f"{a}__{b}", formats=("png",))[0])
    if len(res.models) > 1:
        fig = correspondence_figure(correspondence_panels(res, jobs), title=f"best-matching layers\n{title}")
        files["correspondence_png"], files["correspondence_pdf"] = save_figure(fig, out / "correspondence")
    files["table"] = table
    return files


def log_to_wandb(files: dict[str, Any], jobs: list[JointJob], out: Path, sweep_dir: Path) -> Path | None:
    """The figures and the table in a W&B run (project and mode of the jobs' loggers; offline by default)."""
    from vvm.loggers import log_files_run
    from vvm.settings import WandbSettings
    from vvm.sweep import sweep_name

    loggers = [j.settings.logger for j in jobs if isinstance(j.settings.logger, WandbSettings)]
    projects = {lg.project for lg in loggers}
    modes = {lg.mode for lg in loggers}
    images = {"joint/matrix": files["png"], **{f"joint/pairs/{p.stem}": p for p in files["pairs"]}}
    if "correspondence_png" in files:
        images["joint/correspondence"] = files["correspondence_png"]
    try:
        return log_files_run(
            run_dir=out, name=f"joint-{sweep_name(sweep_dir)}", job_type="joint-cka", images=images,
            tables={"joint/pairs": files["table"]}, project=projects.pop() if len(projects) == 1 else "vvm",
            group=f"sweep-{sweep_name(sweep_dir)}", mode=modes.pop() if len(modes) == 1 else None,
            config={"sweep_dir": str(sweep_dir), "models": [j.tag for j in jobs]},
        )  # fmt: skip
    except Exception as e:  # W&B must not lose the files already written
        log.warning("joint CKA: could not log to W&B (%s: %s); the files are written", type(e).__name__, e)
        return None


def uses_wandb(jobs: list[JointJob]) -> bool:
    from vvm.settings import WandbSettings

    return any(isinstance(j.settings.logger, WandbSettings) for j in jobs)


# ---------------------------------------------------------------------------------------------- entry points
FLAGS = {"batch_size": "--batch-size", "max_samples": "--max-samples", "limit": "the jobs' dataset.limit"}


def check_plan(settings: JobSettings) -> None:
    """The pass's batch plan holds a batch the estimator can use (:func:`vvm.preflight.check_plan`, naming the
    joint pass's flags)."""
    from vvm.pipeline import build_datamodule
    from vvm.preflight import check_plan as check

    check(build_datamodule(settings), settings.cka, limit=settings.dataset.limit, flags=FLAGS)


def rebuild_models(
    found: list[JointJob], notes: list[str], sweep_dir: Path
) -> tuple[dict[str, Any], list[JointJob]]:
    """Every job's model that can be rebuilt (a note in ``notes`` for each that cannot), and those jobs."""
    from vvm.io import InputError

    models, used = {}, []
    for job in found:
        model, note = rebuild_model(job)
        if model is None:
            notes.append(note)
            continue
        models[job.tag] = model
        used.append(job)
    for note in notes:
        log.warning("joint CKA: %s", note)
    if not used:
        raise InputError(f"no finished job in {sweep_dir} could be rebuilt: {'; '.join(notes)}")
    return models, used


def joint_sweep(sweep_dir: str | Path, *, out: str | Path | None = None, device: str | None = None,
                jobs: Sequence[str] | None = None, logger: str = "auto", progress: bool = True,
                **overrides: Any) -> dict[str, Any]:  # fmt: skip
    """Rebuild the sweep's models, run the joint pass, write the files (see the module docstring).
    ``overrides``: ``layers``, ``batch_size``, ``max_samples``, ``seed``. Returns the result, files, notes.

    Before any model is built: ``out`` can be written (else :class:`vvm.io.InputError` naming ``--out``),
    no other joint pass writes there (a lock, ``<out>/.joint.lock``, held to the end), ``jobs`` are the sweep's,
    and the pass's batch plan can be estimated (errors name ``--batch-size``/``--max-samples``)."""
    from vvm.io import InputError, exclusive_lock, writable_dir

    sweep_dir = Path(sweep_dir)
    sweep_jobs(sweep_dir, jobs)  # a sweep's directory, holding these jobs: before anything is made
    out = writable_dir(sweep_dir / "joint" if out is None else out, "--out")  # before torch is imported
    with exclusive_lock(out / ".joint.lock", f"--out={out}: another joint pass is writing there; "
                        "wait for it to finish, or give another --out"):  # fmt: skip
        import torch

        from vvm.cka.joint import hook_target
        from vvm.cka.presets import classifier_name

        found, notes = read_jobs(sweep_dir, jobs)
        overrides = {**overrides, "layers": parse_layers(overrides.get("layers"))}
        if not found:
            raise InputError(f"no finished job in {sweep_dir}: {'; '.join(notes)}; run or resume its jobs")
        check_plan(pass_settings(found, overrides)[0])
        models, used = rebuild_models(found, notes, sweep_dir)
        settings, data_notes = pass_settings(used, overrides)
        notes += data_notes
        if used[0] is not found[0]:
            check_plan(settings)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        res, batches = run_pass(models, settings, device, progress=progress)
        title = f"{res.kernel} CKA, {len(used)} models, {used[0].result.get('dataset')} ({res.n_samples} examples)"
        extra = {"notes": np.array(notes, dtype=str), "batch_fingerprint": batches.fingerprint()}
        heads = {tag: classifier_name(hook_target(m)) for tag, m in models.items()}
        files = write_outputs(res, used, out, title=title, extra=extra, heads=heads)
        if logger == "wandb" or (logger == "auto" and uses_wandb(used)):
            files["wandb"] = log_to_wandb(files, used, out, sweep_dir)
    log.info("joint CKA: %d models, %d layers -> %s", len(used), len(res.layers_x), out)
    return {"result": res, "jobs": used, "files": files, "notes": notes, "out": out}


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give a whole number of examples >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); an input it cannot use is one line on stderr, exit 2."""
    p = argparse.ArgumentParser(
        prog="python -m vvm.joint", description="Joint CKA over every finished job of a sweep."
    )
    p.add_argument("sweep_dir")
    p.add_argument("--layers", help="a preset (blocks, all, seed) or names/globs: stem,layer1.*,fc")
    p.add_argument(
        "--batch-size", type=positive, help="examples per CKA batch (default: the sweep's cka.batch_size)"
    )
    p.add_argument(
        "--max-samples", type=positive, help="examples in the pass (default: the sweep's cka.max_samples)"
    )
    p.add_argument("--seed", type=int, help="the data order's seed (default: the first job's seed)")
    p.add_argument("--jobs", help="only these jobs, e.g. 0,1,2 (fewer models when they do not fit together)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--out", help="output directory (default: <sweep dir>/joint)")
    p.add_argument("--logger", choices=("auto", "wandb", "none"), default="auto",
                   help="auto: W&B when the sweep's jobs logged to W&B (offline unless WANDB_MODE=online)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from vvm.io import InputError, exit_with_error

    if not Path(args.sweep_dir).is_dir():
        exit_with_error(
            p.prog, f"{args.sweep_dir} is not a directory: give a sweep directory (multirun/<date>/<time>)"
        )
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        out = joint_sweep(
            args.sweep_dir, out=args.out, device=args.device, logger=args.logger, progress=not args.no_progress,
            jobs=[j.strip() for j in args.jobs.split(",") if j.strip()] if args.jobs else None, layers=args.layers,
            batch_size=args.batch_size, max_samples=args.max_samples, seed=args.seed,
        )  # fmt: skip
    except InputError as e:
        exit_with_error(p.prog, e)
    # a ConfigError (the batch plan's): vvm.settings imports torch, so it is imported once one is raised
    except ValueError as e:
        from vvm.settings import ConfigError

        if not isinstance(e, ConfigError):
            raise
        exit_with_error(p.prog, e)
    print(f"joint CKA of {len(out['jobs'])} models written to {out['out']}")
    for note in out["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
