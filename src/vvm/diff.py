"""Difference of two CKA maps (or of two maps of another measure), e.g. pretrained minus random for one model.

    python -m vvm.diff outputs/r18-pretrained outputs/r18-random --out outputs/r18-diff
    python -m vvm.diff outputs/r18-pretrained outputs/r18-random --out outputs/r18-diff --measure rsa

Each argument is a run directory (holding cka.npz, or ``<measure>.npz`` with ``--measure``) or the file. The two
maps must have the same layers. With ``--measure rsa`` (or ``knn``) the files are ``diff-rsa.npz/png/pdf``, the
maps ``rsa_a``/``rsa_b``, and the paired standard error is that of the mean of the per-batch differences.
Writes diff.npz (``diff`` = A - B, ``diff_stderr``, ``paired``, ``df``, ``p_value``, ``significant``, ``level``,
``fdr``, ``cka_a``, ``cka_b``, layer names), diff.png and diff.pdf with a diverging colour scale centred on 0
(red: more similar in A, blue: more similar in B; NaN grey); a dot marks the entries whose difference is not
significant.

The standard error of the difference is *paired* when both runs saw the same batches (the same
``batch_fingerprint`` and per-batch HSIC values stored): the delta method on the per-batch differences, so the
batch-to-batch noise both runs share cancels. Otherwise the runs are treated as independent:
``sqrt(se_A² + se_B²)``. Either way it covers the sampling of the data (which examples, in which batches), not
the spread between trainings from different seeds.

Significance uses the Student t quantile the intervals use (:meth:`vvm.cka.CKAResult.interval`): ``B - 1``
degrees of freedom for ``B`` paired batches, Welch–Satterthwaite's for independent runs. By default an entry is
significant when 0 is outside its ``level`` (95%) interval, entry by entry; a map holds hundreds of entries, so
about 5% of the truly equal ones would look different by chance. ``--fdr 0.05`` controls the false discovery
rate over the map instead (Benjamini–Hochberg on the two-sided p-values of the defined entries).
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vvm.io import InputError, exit_with_error, load_npz, writable_dir, write_npz

_PER_BATCH = ("batch_ids", "batch_weights", "batch_hsic_xy", "batch_hsic_xx", "batch_hsic_yy")


# what a map must hold to be compared: cka.npz, or another measure's <measure>.npz
_NEEDED = {"cka": ("cka", "cka_stderr", "layers_x", "layers_y")}
_NEEDED_MEASURE = ("matrix", "stderr", "layers_x", "layers_y")


def _npz_path(p: str | Path, measure: str = "cka") -> Path:
    p = Path(p)
    path = p / f"{measure}.npz" if p.is_dir() else p
    if not path.is_file():
        kind = f"holds no {measure}.npz" if p.is_dir() else "does not exist"
        how = f" (a run writes it with measures=[...,{measure}])" if measure != "cka" else ""
        raise InputError(
            f"{p} {kind}: give a job's run directory (one that holds {measure}.npz), or the file{how}"
        )
    return path


def label(measure: str) -> str:
    """How messages name a measure's map: CKA, RSA, KNN."""
    return measure.upper()


def load_map(p: str | Path, measure: str = "cka") -> dict:
    """The arrays of a run's ``<measure>.npz``; :class:`InputError` naming the file when it cannot be read or is
    not a map of that measure (a truncated or damaged file, a joint.npz, another file)."""
    path = _npz_path(p, measure)
    try:
        z = load_npz(path)
    except Exception as e:  # noqa: BLE001 - truncated (BadZipFile, EOFError), damaged (zlib.error), not npz
        raise InputError(
            f"{path} is not a readable {measure}.npz ({type(e).__name__}: {e}): run the job again to write it"
        ) from None
    missing = [k for k in _NEEDED.get(measure, _NEEDED_MEASURE) if k not in z]
    if missing:
        raise InputError(
            f"{path} is not a job's {label(measure)} map (no {', '.join(missing)}): give a job's {measure}.npz or run "
            "directory"
        )
    return z


def _maps(z: dict, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """A result file's matrix and standard error: ``cka``/``cka_stderr`` in cka.npz, else ``matrix``/``stderr``."""
    return (z["cka"], z["cka_stderr"]) if measure == "cka" else (z["matrix"], z["stderr"])


def measure_difference_stderr(za: dict, zb: dict) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """For a measure averaged over batches (RSA, kNN): the standard error of ``A - B``, the per-entry degrees of
    freedom when paired (batches both runs saw and defined, less one), and whether it is paired: the weighted
    standard error of the per-batch differences when both runs saw the same batches, else independent."""
    import torch

    from vvm.cka.measures import weighted_mean_stderr

    keys = ("batch_ids", "batch_weights", "batch_values", "batch_fingerprint")
    if all(k in za and k in zb for k in keys) and str(za["batch_fingerprint"]) == str(
        zb["batch_fingerprint"]
    ):
        if np.array_equal(za["batch_ids"], zb["batch_ids"]):
            d = torch.as_tensor(np.asarray(za["batch_values"], float) - np.asarray(zb["batch_values"], float))
            _, se = weighted_mean_stderr(d, torch.as_tensor(np.asarray(za["batch_weights"], float)))
            return se.numpy(), np.isfinite(d.numpy()).sum(0) - 1.0, True
    return np.sqrt(za["stderr"] ** 2 + zb["stderr"] ** 2), None, False


def _names(values: np.ndarray, k: int = 4) -> str:
    names = [str(v) for v in values]
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def _settings(z: dict) -> dict | None:
    """What the run recorded that a comparison needs to share (``comparable``: parameters, kernel, estimator,
    precision, examples per pool); None for a file written before it was recorded."""
    import json

    return json.loads(str(z["comparable"])) if "comparable" in z else None


def _check_comparable(za: dict, zb: dict) -> None:
    sa, sb = _settings(za), _settings(zb)
    if sa is not None and sb is not None:
        for key in dict.fromkeys([*sa, *sb]):
            if sa.get(key) != sb.get(key):
                raise InputError(
                    f"the two runs differ in {key} ({sa.get(key)} vs {sb.get(key)}): their maps measure different "
                    f"things, so their difference is not an effect; rerun one with the other's {key}"
                )
    for key in ("layers_x", "layers_y"):
        if [str(v) for v in za[key]] != [str(v) for v in zb[key]]:
            raise InputError(
                f"the two maps have different {key}: [{_names(za[key])}] vs [{_names(zb[key])}]; a difference "
                "map needs the same model and layer selection in both runs"
            )
    for key in ("model_x", "model_y"):
        if key in za and key in zb and str(za[key]) != str(zb[key]):
            warnings.warn(
                f"vvm.diff: the runs are of different models ({key}: {za[key]!s} vs {zb[key]!s}) that share "
                "layer names; the difference compares layers by name only",
                stacklevel=3,
            )


def paired(za: dict, zb: dict) -> bool:
    """Both runs saw the same batches and stored their per-batch HSIC values."""
    if not all(k in za and k in zb for k in (*_PER_BATCH, "batch_fingerprint")):
        return False
    return str(za["batch_fingerprint"]) == str(zb["batch_fingerprint"]) and np.array_equal(
        za["batch_ids"], zb["batch_ids"]
    )


def difference_stderr(za: dict, zb: dict) -> tuple[np.ndarray, bool]:
    """The standard error of ``cka_A - cka_B``, and whether it is paired (see the module docstring)."""
    if paired(za, zb):
        import torch

        from vvm.cka.functional import paired_difference_stderr

        t, u = (
            {k: torch.as_tensor(np.asarray(z[k], dtype=np.float64)) for k in _PER_BATCH} for z in (za, zb)
        )
        se = paired_difference_stderr(
            t["batch_hsic_xy"],
            t["batch_hsic_xx"],
            t["batch_hsic_yy"],
            u["batch_hsic_xy"],
            u["batch_hsic_xx"],
            u["batch_hsic_yy"],
            t["batch_weights"],
        )
        nan = np.isnan(za["cka"]) | np.isnan(zb["cka"])
        return np.where(nan, np.nan, se.numpy()), True
    return np.sqrt(za["cka_stderr"] ** 2 + zb["cka_stderr"] ** 2), False


def difference_df(za: dict, zb: dict, is_paired: bool, measure: str = "cka") -> np.ndarray:
    """Degrees of freedom of the t statistic of every entry: ``B - 1`` for ``B`` paired batches (as
    :meth:`CKAResult.interval`); for independent runs Welch–Satterthwaite's
    ``(v_A + v_B)² / (v_A² / (B_A - 1) + v_B² / (B_B - 1))`` with ``v = se²`` (NaN with fewer than 2 batches)."""
    shape = np.shape(za["cka" if measure == "cka" else "matrix"])
    if is_paired:
        return np.full(shape, len(za["batch_ids"]) - 1.0)
    va, vb = (np.asarray(_maps(z, measure)[1], dtype=float) ** 2 for z in (za, zb))
    na, nb = (float(z["n_batches"]) - 1.0 if "n_batches" in z else math.nan for z in (za, zb))
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (va + vb) ** 2 / (va**2 / na + vb**2 / nb)
    return np.where((na >= 1) & (nb >= 1), df, np.nan)


def benjamini_hochberg(p: np.ndarray, fdr: float) -> np.ndarray:
    """Benjamini–Hochberg at false discovery rate ``fdr`` over the finite entries of ``p`` (any shape): the
    rejected (significant) entries; NaN p-values are neither tested nor counted."""
    if not 0 < fdr < 1:
        raise ValueError(f"fdr={fdr}: use a false discovery rate between 0 and 1, e.g. --fdr 0.05")
    p = np.asarray(p, dtype=float)
    out = np.zeros(p.shape, dtype=bool)
    tested = np.flatnonzero(np.isfinite(p))
    m = tested.size
    if m == 0:
        return out
    order = tested[np.argsort(p.flat[tested], kind="stable")]
    # step-up: reject the k smallest, k the largest rank with p_(k) <= k * fdr / m
    below = np.flatnonzero(p.flat[order] <= np.arange(1, m + 1) * fdr / m)
    if below.size:
        out.flat[order[: below[-1] + 1]] = True
    return out


def significance(
    diff: np.ndarray, se: np.ndarray, df: np.ndarray, *, level: float = 0.95, fdr: float | None = None
) -> dict[str, np.ndarray]:
    """Two-sided p-values of ``diff / se`` under Student's t with ``df`` degrees of freedom, and the significant
    entries: outside the ``level`` interval each (``fdr=None``), or Benjamini–Hochberg at ``fdr`` over the map."""
    from scipy.stats import t as student_t

    if not 0 < level < 1:
        raise ValueError(f"level={level}: use a confidence level between 0 and 1, e.g. 0.95")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2.0 * student_t.sf(np.abs(diff / se), df)
    if fdr is None:
        significant = np.isfinite(p) & (p < 1.0 - level)  # |diff| > t_{(1+level)/2, df} * se
    else:
        significant = benjamini_hochberg(p, fdr)
    return {"p_value": p, "significant": significant}


def cka_difference(
    a: str | Path, b: str | Path, *, level: float = 0.95, fdr: float | None = None, measure: str = "cka"
) -> dict[str, np.ndarray]:
    za, zb = load_map(a, measure), load_map(b, measure)
    _check_comparable(za, zb)
    if measure != "cka":
        return measure_difference(za, zb, measure, level=level, fdr=fdr)
    se, is_paired = difference_stderr(za, zb)
    diff = za["cka"] - zb["cka"]
    df = difference_df(za, zb, is_paired)
    return {
        **tested(diff, se, df, is_paired, level, fdr),
        "cka_a": za["cka"],
        "cka_b": zb["cka"],
        **layers_of(za),
    }


def measure_difference(
    za: dict, zb: dict, measure: str, *, level: float = 0.95, fdr: float | None = None
) -> dict[str, np.ndarray]:
    """:func:`cka_difference` for another measure's files (``matrix``, ``stderr``, per-batch ``batch_values``)."""
    se, paired_df, is_paired = measure_difference_stderr(za, zb)
    diff = za["matrix"] - zb["matrix"]
    df = paired_df if paired_df is not None else difference_df(za, zb, False, measure)
    se = np.where(np.isnan(diff), np.nan, se)
    return {
        **tested(diff, se, df, is_paired, level, fdr),
        "measure": np.array(measure),
        f"{measure}_a": za["matrix"],
        f"{measure}_b": zb["matrix"],
        **layers_of(za),
    }


def tested(diff: Any, se: Any, df: Any, is_paired: bool, level: float, fdr: float | None) -> dict[str, Any]:
    """What diff.npz holds of a difference, whichever measure: the difference, its standard error, whether it is
    paired, its degrees of freedom and the significance test (:func:`significance`) at ``level`` (``fdr``)."""
    return {
        "diff": diff,
        "diff_stderr": se,
        "paired": np.array(is_paired),
        "df": df,
        **significance(diff, se, df, level=level, fdr=fdr),
        "level": np.array(level),
        "fdr": np.array(math.nan if fdr is None else fdr),
    }


def layers_of(z: dict) -> dict[str, Any]:
    return {"layers_x": z["layers_x"], "layers_y": z["layers_y"]}


def write_difference(
    a: str | Path,
    b: str | Path,
    out: str | Path,
    *,
    title: str | None = None,
    level: float = 0.95,
    fdr: float | None = None,
    measure: str = "cka",
) -> list[Path]:
    from vvm.plots.heatmap import save_figure

    out = writable_dir(out, "--out")  # a folder that takes files (not a file, not /proc), before the work
    d = cka_difference(a, b, level=level, fdr=fdr, measure=measure)
    stem = "diff" if measure == "cka" else f"diff-{measure}"
    sources = {"source_a": str(_npz_path(a, measure)), "source_b": str(_npz_path(b, measure))}
    paths = [write_npz(out / f"{stem}.npz", **d, **sources)]
    paths += save_figure(
        difference_figure(d, a, b, measure=measure, title=title, level=level, fdr=fdr), out / stem
    )
    return paths


def run_facts(p: str | Path, measure: str = "cka") -> dict:
    """What a map's run says about itself, for the figure's title: result.json beside the npz (model, init,
    dataset, seed), else the npz's own ``model_x``; ``{}`` when neither says."""
    from vvm.io import load_json

    path = _npz_path(p, measure)
    try:
        facts = load_json(path.parent / "result.json")
    except (OSError, ValueError):
        facts = None
    if isinstance(facts, dict) and facts.get("model"):
        return facts
    z = load_npz(path)
    return {"model": str(z["model_x"])} if "model_x" in z else {}


def difference_figure(
    d: dict,
    a: str | Path,
    b: str | Path,
    *,
    measure: str = "cka",
    title: str | None = None,
    level: float = 0.95,
    fdr: float | None = None,
):
    """diff.png: ``A - B`` on a diverging scale centred on 0, a dot on every entry not significant; the title
    names both runs by their facts (model, init, dataset, seed), never by their folders."""
    from vvm.plots.heatmap import heatmap_figure
    from vvm.plots.style import caption, job_title, quantity

    finite = d["diff"][np.isfinite(d["diff"])]
    lim = float(max(np.abs(finite).max(), 1e-3)) if finite.size else 1.0
    kind = "paired" if bool(d["paired"]) else "independent"
    test = f"FDR {fdr:g} (Benjamini-Hochberg)" if fdr is not None else f"{level:.0%} t interval, per entry"
    za = load_map(a, measure)
    what = quantity(measure, za)
    fa, fb = run_facts(a, measure), run_facts(b, measure)
    names = [job_title(f) if f else side for f, side in ((fa, "A"), (fb, "B"))]
    n = int(za["n_samples"]) if "n_samples" in za else None
    nb = int(za["n_batches"]) if "n_batches" in za else None
    fig = heatmap_figure(
        d["diff"],
        [str(v) for v in d["layers_x"]],
        [str(v) for v in d["layers_y"]],
        title=title or f"{what}: A − B\nA = {names[0]}\nB = {names[1]}",
        xlabel=str(za.get("model_y", "layer")),
        ylabel=str(za.get("model_x", "layer")),
        cbar_label=f"Δ {what}, A − B",
        caption=caption(
            n,
            nb,
            "red: more similar in A, blue: in B",
            f"dots: not significant ({kind} standard error, {test})",
        ),
        vmin=-lim,
        vmax=lim,
        cmap="RdBu_r",
    )
    mark_not_significant(fig.axes[0], d["diff"], d["significant"])
    return fig


def mark_not_significant(ax, diff: np.ndarray, significant: np.ndarray) -> None:
    """A dot on every defined cell whose difference is not significant (not distinguishable from 0)."""
    rows, cols = np.nonzero(np.isfinite(diff) & ~significant)
    if rows.size:
        ax.scatter(cols + 0.5, rows + 0.5, s=6, c="black", marker="o", linewidths=0)


def main(argv: list[str] | None = None) -> None:
    """The command line; a map it cannot read or compare is one line on stderr, exit status 2."""
    p = argparse.ArgumentParser(
        prog="python -m vvm.diff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("a", help="run directory or cka.npz (the minuend, e.g. pretrained)")
    p.add_argument("b", help="run directory or cka.npz (subtracted, e.g. random)")
    p.add_argument("--out", "-o", required=True, help="directory for diff.npz, diff.png, diff.pdf")
    p.add_argument(
        "--measure",
        default="cka",
        help="which measure's maps: <measure>.npz of the runs (measures=[...]: e.g. rsa); files diff-<measure>.*",
    )
    p.add_argument("--title", default=None)
    p.add_argument("--level", type=float, default=0.95, help="confidence level of each entry's t interval")
    p.add_argument(
        "--fdr",
        type=float,
        default=None,
        help="control the false discovery rate over the map at this level (Benjamini-Hochberg), e.g. 0.05",
    )
    args = p.parse_args(argv)
    for name, value in (("--level", args.level), ("--fdr", args.fdr)):
        if value is not None and not 0 < value < 1:
            p.error(f"{name} {value}: use a number between 0 and 1")
    from vvm.cka.measures import MEASURES  # the engine (torch): after --help

    if args.measure not in MEASURES:
        p.error(f"--measure {args.measure}: use one of {', '.join(MEASURES)}")
    try:
        paths = write_difference(
            args.a, args.b, args.out, title=args.title, level=args.level, fdr=args.fdr, measure=args.measure
        )
    except InputError as e:
        exit_with_error(p.prog, e)
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
