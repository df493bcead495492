"""Difference of two CKA maps, e.g. pretrained minus random for one model.

    python -m vvm.diff outputs/r18-pretrained outputs/r18-random --out outputs/r18-diff

Each argument is a run directory (holding cka.npz) or a cka.npz file. The two maps must have the same layers.
Writes diff.npz (``diff`` = A - B, ``diff_stderr``, ``paired``, ``cka_a``, ``cka_b``, layer names), diff.png and
diff.pdf with a diverging colour scale centred on 0 (red: more similar in A, blue: more similar in B; NaN grey);
a dot marks the entries whose difference is within two standard errors of 0.

The standard error of the difference is *paired* when both runs saw the same batches (the same
``batch_fingerprint`` and per-batch HSIC values stored): the delta method on the per-batch differences, so the
batch-to-batch noise both runs share cancels. Otherwise the runs are treated as independent:
``sqrt(se_A² + se_B²)``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from vvm.cka.functional import paired_difference_stderr
from vvm.io import load_npz, write_npz

_PER_BATCH = ("batch_ids", "batch_weights", "batch_hsic_xy", "batch_hsic_xx", "batch_hsic_yy")


def _npz_path(p: str | Path) -> Path:
    p = Path(p)
    path = p / "cka.npz" if p.is_dir() else p
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: give a run directory that holds cka.npz, or the file"
        )
    return path


def _names(values: np.ndarray, k: int = 4) -> str:
    names = [str(v) for v in values]
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def _check_comparable(za: dict, zb: dict) -> None:
    for key in ("layers_x", "layers_y"):
        if [str(v) for v in za[key]] != [str(v) for v in zb[key]]:
            raise ValueError(
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
        t, u = (
            {k: torch.as_tensor(np.asarray(z[k], dtype=np.float64)) for k in _PER_BATCH} for z in (za, zb)
        )
        se = paired_difference_stderr(
            t["batch_hsic_xy"], t["batch_hsic_xx"], t["batch_hsic_yy"],
            u["batch_hsic_xy"], u["batch_hsic_xx"], u["batch_hsic_yy"],
            t["batch_weights"],
        )  # fmt: skip
        nan = np.isnan(za["cka"]) | np.isnan(zb["cka"])
        return np.where(nan, np.nan, se.numpy()), True
    return np.sqrt(za["cka_stderr"] ** 2 + zb["cka_stderr"] ** 2), False


def cka_difference(a: str | Path, b: str | Path) -> dict[str, np.ndarray]:
    za, zb = load_npz(_npz_path(a)), load_npz(_npz_path(b))
    _check_comparable(za, zb)
    se, is_paired = difference_stderr(za, zb)
    return {
        "diff": za["cka"] - zb["cka"],
        "diff_stderr": se,
        "paired": np.array(is_paired),
        "cka_a": za["cka"],
        "cka_b": zb["cka"],
        "layers_x": za["layers_x"],
        "layers_y": za["layers_y"],
    }


def write_difference(
    a: str | Path, b: str | Path, out: str | Path, *, title: str | None = None
) -> list[Path]:
    from vvm.plots.heatmap import heatmap_figure, save_figure

    d = cka_difference(a, b)
    out = Path(out)
    paths = [write_npz(out / "diff.npz", **d, source_a=str(_npz_path(a)), source_b=str(_npz_path(b)))]
    finite = d["diff"][np.isfinite(d["diff"])]
    lim = float(max(np.abs(finite).max(), 1e-3)) if finite.size else 1.0
    kind = "paired" if bool(d["paired"]) else "independent"
    fig = heatmap_figure(
        d["diff"],
        [str(v) for v in d["layers_x"]],
        [str(v) for v in d["layers_y"]],
        title=title
        or f"CKA difference: {Path(a).name} - {Path(b).name} (dots: within 2 {kind} standard errors of 0)",
        vmin=-lim,
        vmax=lim,
        cmap="RdBu_r",
    )
    mark_within(fig.axes[0], d["diff"], d["diff_stderr"])
    paths += save_figure(fig, out / "diff")
    return paths


def mark_within(ax, diff: np.ndarray, se: np.ndarray, k: float = 2.0) -> None:
    """A dot on every cell whose difference is within ``k`` standard errors of 0 (not distinguishable)."""
    rows, cols = np.nonzero(np.abs(diff) <= k * se)
    if rows.size:
        ax.scatter(cols + 0.5, rows + 0.5, s=6, c="black", marker="o", linewidths=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m vvm.diff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("a", help="run directory or cka.npz (the minuend, e.g. pretrained)")
    p.add_argument("b", help="run directory or cka.npz (subtracted, e.g. random)")
    p.add_argument("--out", "-o", required=True, help="directory for diff.npz, diff.png, diff.pdf")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    for path in write_difference(args.a, args.b, args.out, title=args.title):
        print(path)


if __name__ == "__main__":
    main()
