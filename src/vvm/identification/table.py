"""``python -m vvm.identification <sweep_dir>``: Kornblith et al. (2019)'s Table 2 for a sweep of one architecture
trained from several seeds: how often each similarity index finds, for a layer of one network, the same layer
of another network as its most similar one.

The sweep's models are rebuilt once (:mod:`vvm.joint`: the weights each job used, never retrained) and run through
joint passes over the same batches and pools (the first job's data and seed): every index of :data:`INDICES` in as
few passes as its settings allow (one measure appears once per pass; the RBF bandwidths are a pass each). For
every pair of models and both directions, a layer is identified when its own entry is its row's maximum; the
logits (the classifier) are left out, as the paper does. Ties (entries within 1e-9 of the maximum: the CCA family
between layers wider than the pool, all 1) are split: a row whose maximum ``t`` layers share, its own among them,
counts ``1/t`` (the expected accuracy of a random tie-break; the paper's argmax picks one of them). The accuracy
is the mean over every layer, direction and pair of models.

Files (``<sweep_dir>/identification/`` or ``--out``): ``identification.csv`` (index, measure, its parameters,
accuracy, layers counted, ties) and ``identification.md`` (the table beside the paper's CIFAR-10 numbers).
With ``model=plain`` (:mod:`vvm.models.plain`) it is the paper's experiment; ``+sweep=kornblith_table2`` trains
the seeds and writes this table at the end of the multirun (:class:`IdentificationTable`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback

from vvm.sweep.records import read_jobs

log = logging.getLogger(__name__)

LINEAR = {"kernel": "linear"}  # the pass's CKA options (only CKA reads them): the other indices ride along
# (label, measure, the measure's parameters, the CKA pass's options): Kornblith et al.'s rows and vvm's others
INDICES: tuple[tuple[str, str, dict[str, Any], dict[str, Any]], ...] = (
    ("CCA (ρ̄)", "cca", {"statistic": "rho"}, LINEAR),
    ("CCA (R²_CCA)", "cca", {"statistic": "r2"}, LINEAR),
    ("SVCCA (ρ̄)", "svcca", {"statistic": "rho"}, LINEAR),
    ("SVCCA (R²_CCA)", "svcca", {"statistic": "r2"}, LINEAR),
    ("PWCCA", "pwcca", {}, LINEAR),
    ("Linear Reg.", "linreg", {}, LINEAR),
    ("Procrustes", "procrustes", {}, LINEAR),
    ("RSA (Spearman)", "rsa", {}, LINEAR),
    ("mutual kNN", "knn", {}, LINEAR),
    ("CKA (Linear)", "cka", {}, LINEAR),
    ("CKA (RBF 0.2)", "cka", {}, {"kernel": "rbf", "rbf_frac": 0.2}),
    ("CKA (RBF 0.4)", "cka", {}, {"kernel": "rbf", "rbf_frac": 0.4}),
    ("CKA (RBF 0.8)", "cka", {}, {"kernel": "rbf", "rbf_frac": 0.8}),
)
# Kornblith et al. (2019), Table 2 (10 Plain-10 CNNs on CIFAR-10, logits left out), in percent; quoted from the
# paper (arXiv:1905.00414); the indices it does not have are absent
PAPER = {
    "CCA (ρ̄)": 1.4,
    "CCA (R²_CCA)": 10.6,
    "SVCCA (ρ̄)": 9.9,
    "SVCCA (R²_CCA)": 15.1,
    "PWCCA": 11.1,
    "Linear Reg.": 45.4,
    "CKA (Linear)": 99.3,
    "CKA (RBF 0.2)": 80.6,
    "CKA (RBF 0.4)": 99.1,
    "CKA (RBF 0.8)": 99.3,
}


def plan_passes(indices: Sequence[tuple[str, str, dict, dict]] = INDICES) -> list[list[int]]:
    """The indices (positions in ``indices``) of each pass: the same CKA options, each measure once."""
    passes: list[list[int]] = []
    for i, (_, measure, _, engine) in enumerate(indices):
        for p in passes:
            if indices[p[0]][3] == engine and all(indices[j][1] != measure for j in p):
                p.append(i)
                break
        else:
            passes.append([i])
    return passes


def tie_split_hits(block: np.ndarray) -> tuple[float, int, int]:
    """``(hits, rows, ties)`` of one direction of a block between two copies of one layer list: row ``i`` counts
    ``1/t`` when its own entry is among the ``t`` entries within 1e-9 of its maximum; all-NaN rows are left
    out."""
    from vvm.cka.correspondence import near_max

    near = near_max(block)
    rows = np.flatnonzero(np.isfinite(np.diag(block)))
    counts = near.sum(axis=1)
    hits = sum(float(near[i, i]) / counts[i] for i in rows)
    return hits, len(rows), int((counts[rows] > 1).sum())


def accuracy(res: Any, heads: dict[str, str | None]) -> dict[str, float]:
    """Layer identification over every pair of models and both directions, the classifier left out."""
    from vvm.cka.correspondence import records

    hits = rows = ties = 0.0
    for i, a in enumerate(res.models):
        keep = [k for k, n in enumerate(res.layers_of(a)) if not records([n], heads.get(a))]
        for b in res.models[i + 1 :]:
            block = res.block(a, b).numpy()[np.ix_(keep, keep)]
            for m in (block, block.T):
                h, r, t = tie_split_hits(m)
                hits, rows, ties = hits + h, rows + r, ties + t
    return {"accuracy": hits / rows if rows else float("nan"), "layers": int(rows), "ties": int(ties)}


def pass_settings(settings: Any, picked: Sequence[tuple[str, str, dict, dict]]) -> Any:
    """``settings`` with the CKA options and the measures' parameters of one pass."""
    engine = picked[0][3]
    cka = dataclasses.replace(settings.cka, kernel=type(settings.cka.kernel)(engine["kernel"]))
    rbf = settings.kernel.rbf
    kernel = dataclasses.replace(
        settings.kernel, rbf=dataclasses.replace(rbf, frac=float(engine.get("rbf_frac", rbf.frac)))
    )
    measure = settings.measure
    for _, name, params, _ in picked:
        if params:
            own = getattr(measure, name)
            fixed = {k: type(getattr(own, k))(v) for k, v in params.items()}
            measure = dataclasses.replace(measure, **{name: dataclasses.replace(own, **fixed)})
    return dataclasses.replace(settings, cka=cka, kernel=kernel, measure=measure)


def identification_table(
    sweep_dir: str | Path, *, out: str | Path | None = None, device: str | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Rebuild the sweep's models, run the passes, write the table (see the module docstring); its rows."""
    from vvm.cka.joint import hook_target
    from vvm.cka.presets import classifier_name
    from vvm.io import InputError, writable_dir
    from vvm.joint.joint_pass import pass_device, rebuild_models, run_measures
    from vvm.joint.joint_pass import pass_settings as joint_settings

    sweep_dir = Path(sweep_dir)
    out = writable_dir(sweep_dir / "identification" if out is None else out, "--out")
    found, notes = read_jobs(sweep_dir)
    if len(found) < 2:
        raise InputError(
            f"{sweep_dir}: layer identification needs two finished jobs or more ({'; '.join(notes)})"
        )
    models, used = rebuild_models(found, notes, sweep_dir)
    settings = joint_settings(used, {})[0]
    heads = {tag: classifier_name(hook_target(m)) for tag, m in models.items()}
    device = pass_device(device)
    rows = []
    for p in plan_passes():
        picked = [INDICES[i] for i in p]
        results, _ = run_measures(
            models, pass_settings(settings, picked), device, [m for _, m, _, _ in picked], progress=progress
        )
        for label, name, params, engine in picked:
            found_acc = accuracy(results[name], heads)
            options = {**params, **(engine if name == "cka" else {})}
            rows.append(
                {
                    "index": label,
                    "measure": name,
                    "params": options,
                    **found_acc,
                    "paper": PAPER.get(label),
                    "n_samples": results[name].n_samples,
                }
            )
            log.info("layer identification: %s %.3f", label, found_acc["accuracy"])
    order = [label for label, _, _, _ in INDICES]
    rows.sort(key=lambda r: order.index(r["index"]))
    write_table(rows, out, len(used), used[0].result.get("dataset"))
    return rows


def write_table(rows: list[dict[str, Any]], out: Path, n_models: int, dataset: Any) -> None:
    """identification.csv and identification.md."""
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "identification.csv", index=False)
    n = rows[0]["n_samples"] if rows else 0
    lines = [
        f"| index | vvm: {dataset}, {n_models} seeds, {n} examples (%) | paper: CIFAR-10, 10 seeds (%) |",
        "|---|---:|---:|",
    ]
    for r in rows:
        paper = "" if r["paper"] is None else f"{r['paper']:.1f}"
        lines.append(f"| {r['index']} | {100 * r['accuracy']:.1f} | {paper} |")
    (out / "identification.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vvm.identification",
        description="Kornblith et al. (2019) Table 2: layer identification across a sweep's seeds, per index.",
    )
    p.add_argument("sweep_dir")
    p.add_argument("--out", help="output directory (default: <sweep dir>/identification)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from vvm.io import InputError, exit_with_error

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        identification_table(args.sweep_dir, out=args.out, device=args.device, progress=not args.no_progress)
    except InputError as e:
        exit_with_error(p.prog, e)
    return 0


class IdentificationTable(Callback):
    """Hydra callback (``+sweep=kornblith_table2``): the table at the end of the multirun."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            identification_table(sweep_dir)
        except Exception:
            log.exception("layer identification failed (rerun: python -m vvm.identification %s)", sweep_dir)
