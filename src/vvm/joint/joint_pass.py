"""``python -m vvm.joint <sweep_dir>``: CKA (and, with ``--measures cka,rsa,knn``, RSA and mutual kNN) between
every layer of every finished job's model, in one pass.

Each finished job's model is rebuilt from the config stored in its result.json, with the weights that job used
(:func:`vvm.pipeline.weights.load_or_train`: random seeded init, ``init.checkpoint``, published weights, or the cached
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

With ``--measures`` every measure gets the same files, named ``joint-<measure>.npz`` (``matrix``, ``stderr``, the
measure's parameters, from the first job's ``measure.*``), ``joint-<measure>.csv`` (its ``mean_<measure>``,
mean of row maxima and layer identification), ``joint-<measure>.png/pdf``, ``pairs-<measure>/`` and
``correspondence-<measure>.png/pdf``, and its figures under ``joint/<measure>/`` in W&B.

Job tags are the jobs' ``tag`` less the dataset they share (``r18-pretrained``), with the job number added where
tags repeat (``r18-pretrained-0``, ``-1``, ``-2`` for ``seed=0,1,2``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vvm.joint.files import log_to_wandb, uses_wandb, write_outputs
from vvm.joint.settings import FLAGS, JointSettings, pass_settings, setting_notes
from vvm.sweep.records import JointJob, read_jobs, sweep_jobs

if TYPE_CHECKING:  # the heavy imports (torch, the engine) wait for the work: --help answers at once
    from vvm.cka.joint import JointResult

log = logging.getLogger(__name__)


def rebuild_model(job: JointJob) -> tuple[Any, str | None]:
    """The job's model with the weights it used, or ``(None, note)``; never trains (no ``fit``): a trained
    model comes from its cached checkpoint, else from the file the job recorded."""
    from vvm.pipeline.objects import build_datamodule, build_model, checkpoint_cache
    from vvm.pipeline.weights import WeightsUnavailable, load_or_train

    s = job.settings
    try:
        dm = build_datamodule(s.dataset, s.similarity, batch_size=s.train.batch_size, seed=s.seed)
        model = build_model(s.model, dm)
        cache = checkpoint_cache(
            s.model, checkpoints=s.paths.checkpoints, dataset=s.dataset, train=s.train, seed=s.seed
        )
        load_or_train(
            model,
            s.model,
            s.init,
            dataset_name=dm.name,
            cache=cache,
            known_checkpoint=job.result.get("checkpoint"),
        )
    except WeightsUnavailable as e:
        return None, f"job {job.job} ({job.tag}) skipped: {e} (the joint pass never trains)"
    except Exception as e:  # a model that cannot be rebuilt (offline weights, a missing file) is a note
        return (
            None,
            f"job {job.job} ({job.tag}) skipped: its model could not be rebuilt: {type(e).__name__}: {e}",
        )
    return model, None


# ---------------------------------------------------------------------------------------------- the pass
def parse_measures(parser: argparse.ArgumentParser, text: str) -> list[str]:
    from vvm.cka.measures import MEASURES  # the engine (torch): after --help

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in MEASURES]
    if bad or not names or len(set(names)) != len(names):
        parser.error(f"--measures {text}: name each once, from {', '.join(MEASURES)} (e.g. cka,rsa,knn)")
    return names


def parse_layers(text: str | None) -> str | list[str] | None:
    """``blocks`` (a preset) or ``stem,layer1.*,fc`` (names and globs)."""
    from vvm.cka.presets import PRESETS

    if text is None or text in PRESETS:
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def run_pass(
    models: dict[str, Any], settings: JointSettings, device: str, *, progress: bool = True
) -> tuple[JointResult, Any]:
    """One pass of every model over the CKA batches of ``settings``' dataset (the EvalBatches plan): CKA."""
    results, batches = run_measures(models, settings, device, ["cka"], progress=progress)
    return results["cka"], batches


def run_measures(
    models: dict[str, Any],
    settings: JointSettings,
    device: str,
    measures: Sequence[str],
    *,
    progress: bool = True,
) -> tuple[dict[str, Any], Any]:
    """:func:`run_pass` for ``measures`` (``cka``, ``rsa``, ``knn``) in the same pass, their parameters the
    settings' ``measure.*``: ``{measure: result}`` and the batches."""
    from tqdm import tqdm

    from vvm.cka.joint import move_models
    from vvm.cka.similarity import JointSimilarity
    from vvm.settings import measure_params

    dm = pass_datamodule(settings, measures)
    batches = dm.cka_batches()
    move_models(models, device)
    metric = JointSimilarity(
        models,
        settings.similarity.layer_spec(),
        measures=list(measures),
        max_batches=len(batches.plan),
        params=measure_params(settings.measure, list(measures)),
        plan=batches.layout,
        **settings.engine_options(),
    ).to(device)
    loader = dm.eval_loader(batches, device=device)  # the datamodule's workers; pinned memory for a GPU
    with metric.track():
        for i, (x, _) in enumerate(tqdm(loader, total=len(batches), desc="joint CKA", disable=not progress)):
            metric.begin_batch(i, batches)
            metric.feed(x.to(device, non_blocking=True))
    return metric.compute(), batches


# ---------------------------------------------------------------------------------------------- entry points


def check_joint_plan(settings: JointSettings, measures: Sequence[str] = ("cka",)) -> None:
    """The joint pass's batch plan holds a batch the estimator (and each measure: kNN's k + 1) can use
    (:func:`vvm.pipeline.preflight.check_batch_plan`, naming the joint pass's flags)."""
    from vvm.pipeline.preflight import check_batch_plan
    from vvm.settings import job_measures

    built = job_measures(list(measures), settings.measure, settings.engine_options())
    dm = pass_datamodule(settings, measures)
    estimator = settings.cka.estimator.value
    check_batch_plan(
        dm, settings.similarity, estimator, limit=settings.dataset.limit, flags=FLAGS, measures=built
    )


def pass_datamodule(settings: JointSettings, measures: Sequence[str]) -> Any:
    """The pass's datamodule: the settings' data, with pools of the declared n of ``measures`` (the joint pass's
    own ``--measures``, not the first job's): the same pools for every model."""
    from vvm.cka.pools import declared_pool
    from vvm.pipeline.objects import build_datamodule
    from vvm.settings import job_measures

    pool = declared_pool(job_measures(list(measures), settings.measure, settings.engine_options()).values())
    return build_datamodule(
        settings.dataset,
        settings.similarity,
        batch_size=settings.batch_size,
        seed=settings.seed,
        pool_size=pool,
    )


def rebuild_models(
    found: list[JointJob], notes: list[str], sweep_dir: Path, layers: Any = None
) -> tuple[dict[str, Any], list[JointJob]]:
    """Every job's model that can be rebuilt (a note in ``notes`` for each that cannot), and those jobs.
    ``layers`` (the ``--layers`` spec, if given) is resolved on each model as soon as it is built: a layer a
    model lacks is an :class:`~vvm.io.InputError` naming ``--layers`` before the other models are loaded."""
    from vvm.cka.joint import hook_target
    from vvm.cka.presets import resolve_layers
    from vvm.io import InputError

    models, used = {}, []
    for job in found:
        model, note = rebuild_model(job)
        if model is None:
            notes.append(note)
            continue
        if layers is not None:
            try:
                resolve_layers(hook_target(model), layers)
            except ValueError as e:
                text = layers if isinstance(layers, str) else ",".join(layers)
                raise InputError(f"--layers={text}: job {job.job}'s model ({job.tag}): {e}") from None
        models[job.tag] = model
        used.append(job)
    for note in notes:
        log.warning("joint CKA: %s", note)
    if not used:
        raise InputError(f"no finished job in {sweep_dir} could be rebuilt: {'; '.join(notes)}")
    return models, used


def joint_sweep(
    sweep_dir: str | Path,
    *,
    out: str | Path | None = None,
    device: str | None = None,
    jobs: Sequence[str] | None = None,
    logger: str = "auto",
    progress: bool = True,
    measures: Sequence[str] = ("cka",),
    **overrides: Any,
) -> dict[str, Any]:
    """Rebuild the sweep's models, run the joint pass, write the files (see the module docstring).
    ``overrides``: ``layers``, ``batch_size``, ``max_samples``, ``seed``. Returns the result (the first
    measure's; ``results``: every measure's), files, notes.

    Before any model is built: ``out`` can be written (else :class:`vvm.io.InputError` naming ``--out``),
    no other joint pass writes there (a lock, ``<out>/.joint.lock``, held to the end), ``jobs`` are the sweep's,
    and the pass's batch plan can be estimated (errors name ``--batch-size``/``--max-samples``)."""
    from vvm.io import InputError, exclusive_lock, writable_dir

    sweep_dir = Path(sweep_dir)
    sweep_jobs(sweep_dir, jobs)  # a sweep's directory, holding these jobs: before anything is made
    out = writable_dir(sweep_dir / "joint" if out is None else out, "--out")  # before torch is imported
    with exclusive_lock(
        out / ".joint.lock",
        f"--out={out}: another joint pass is writing there; wait for it to finish, or give another --out",
    ):
        from vvm.cka.joint import hook_target
        from vvm.cka.measures import make_measure
        from vvm.cka.presets import classifier_name

        device = pass_device(device)
        found, notes = read_jobs(sweep_dir, jobs)
        overrides = {**overrides, "layers": parse_layers(overrides.get("layers"))}
        if not found:
            raise InputError(f"no finished job in {sweep_dir}: {'; '.join(notes)}; run or resume its jobs")
        check_joint_plan(pass_settings(found, overrides)[0], measures)
        models, used = rebuild_models(found, notes, sweep_dir, overrides.get("layers"))
        settings, data_notes = pass_settings(used, overrides)
        notes += data_notes + setting_notes(used, measures)
        if used[0] is not found[0]:
            check_joint_plan(settings, measures)
        results, batches = run_measures(models, settings, device, measures, progress=progress)
        extra = {"notes": np.array(notes, dtype=str), "batch_fingerprint": batches.fingerprint()}
        heads = {tag: classifier_name(hook_target(m)) for tag, m in models.items()}
        by_measure = {}
        for m, res in results.items():
            kind = f"{res.kernel} CKA" if m == "cka" else make_measure(m, res.params).title
            title = f"{kind}, {len(used)} models, {used[0].result.get('dataset')} ({res.n_samples} examples)"
            by_measure[m] = write_outputs(res, used, out, title=title, extra=extra, heads=heads, measure=m)
        files = {**by_measure.get("cka", {}), "measures": {m: f for m, f in by_measure.items() if m != "cka"}}
        if logger == "wandb" or (logger == "auto" and uses_wandb(used)):
            files["wandb"] = log_to_wandb(files, used, out, sweep_dir)
    res = next(iter(results.values()))
    log.info(
        "joint pass: %d models, %d layers, %s -> %s", len(used), len(res.layers_x), ", ".join(results), out
    )
    return {"result": res, "results": results, "jobs": used, "files": files, "notes": notes, "out": out}


def pass_device(name: str | None) -> str:
    """``--device``: a device torch knows and this machine has (default: cuda when there is one); else an
    :class:`InputError` that says what to give."""
    import torch

    from vvm.io import InputError

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device={name!r} is not a device: give cpu, cuda or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device={name!r}: the joint pass runs on cpu or cuda (cuda:<index>)")
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and count == 0:
        raise InputError(
            f"--device={name!r}: this machine has no CUDA GPU; give --device cpu (or leave it out)"
        )
    if device.type == "cuda" and (device.index or 0) >= count:
        raise InputError(f"--device={name!r}: this machine has {count} GPU(s): cuda:0 to cuda:{count - 1}")
    return str(device)


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give a whole number of examples >= 1")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line's flags (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m vvm.joint", description="Joint CKA over every finished job of a sweep."
    )
    p.add_argument("sweep_dir")
    p.add_argument("--layers", help="a preset (blocks, all, term_project) or names/globs: stem,layer1.*,fc")
    p.add_argument(
        "--batch-size",
        type=positive,
        help="examples per CKA batch (default: the sweep's similarity.batch_size)",
    )
    p.add_argument(
        "--max-samples",
        type=positive,
        help="examples in the pass (default: the sweep's similarity.max_samples)",
    )
    p.add_argument("--seed", type=int, help="the data order's seed (default: the first job's seed)")
    p.add_argument("--jobs", help="only these jobs, e.g. 0,1,2 (fewer models when they do not fit together)")
    p.add_argument(
        "--measures", default="cka", help="similarity measures, in one pass: cka,rsa,knn (default cka)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--out", help="output directory (default: <sweep dir>/joint)")
    p.add_argument(
        "--logger",
        choices=("auto", "wandb", "none"),
        default="auto",
        help="auto: W&B when the sweep's jobs logged to W&B (online when logged in to W&B, else offline)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); an input it cannot use is one line on stderr, exit 2."""
    p = parser()
    args = p.parse_args(argv)
    from vvm.io import InputError, exit_with_error

    if not Path(args.sweep_dir).is_dir():
        exit_with_error(
            p.prog, f"{args.sweep_dir} is not a directory: give a sweep directory (multirun/<date>/<time>)"
        )
    measures = parse_measures(p, args.measures)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        out = joint_sweep(
            args.sweep_dir,
            out=args.out,
            device=args.device,
            logger=args.logger,
            progress=not args.no_progress,
            jobs=[j.strip() for j in args.jobs.split(",") if j.strip()] if args.jobs else None,
            layers=args.layers,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            seed=args.seed,
            measures=measures,
        )
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
