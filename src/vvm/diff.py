"""Difference of two CKA maps, e.g. pretrained minus random for one model.

    python -m vvm.diff outputs/r18-pretrained outputs/r18-random --out outputs/r18-diff

Each argument is a run directory (holding cka.npz) or a cka.npz file. The two maps must have the same layers.
Writes diff.npz (``diff`` = A - B, ``cka_a``, ``cka_b``, layer names), diff.png and diff.pdf with a diverging
colour scale centred on 0 (red: more similar in A, blue: more similar in B; NaN grey).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vvm.io import load_npz, write_npz


def _npz_path(p: str | Path) -> Path:
    p = Path(p)
    path = p / "cka.npz" if p.is_dir() else p
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: give a run directory that holds cka.npz, or the file"
        )
    return path


def cka_difference(a: str | Path, b: str | Path) -> dict[str, np.ndarray]:
    za, zb = load_npz(_npz_path(a)), load_npz(_npz_path(b))
    for key in ("layers_x", "layers_y"):
        if list(za[key]) != list(zb[key]):
            raise ValueError(
                f"the two maps have different {key}: {list(za[key])[:4]}... vs {list(zb[key])[:4]}...; "
                "a difference map needs the same model and layer selection in both runs"
            )
    return {
        "diff": za["cka"] - zb["cka"],
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
    fig = heatmap_figure(
        d["diff"],
        list(d["layers_x"]),
        list(d["layers_y"]),
        title=title or f"CKA difference: {Path(a).name} - {Path(b).name}",
        vmin=-lim,
        vmax=lim,
        cmap="RdBu_r",
    )
    paths += save_figure(fig, out / "diff")
    return paths


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
