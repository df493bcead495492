"""Benchmark: each per-layer analysis against the CKA pass of the same job, side by side in one run.

Job: a model (default the CIFAR ResNet-18, random init), the ``blocks`` layers, digits (1,437 train / 360 test
images, the CKA pass over the 360 test images in batches of 256, as ``python -m vvm model=r18 dataset=digits``
runs it). Each round times, back to back:

- cka: ``StreamingCKA(net, "blocks")`` over the datamodule's ``test_dataloader()`` (the seeded CKA plan), with
  the result computed (Lightning's own per-batch overhead is not included, which flatters the CKA pass);
- erf: :func:`vvm.analyses.effective_receptive_fields` on the first 64 images of the same plan;
- attention: :func:`vvm.analyses.mean_attention_distance` (a one-line note for a CNN: no time to speak of);
- probe: :func:`vvm.analyses.probe_datamodule` (fit on the training split, accuracy on the test split).

The table shows the median of the per-round ratios (analysis / cka) and their range, and the images each one
reads; on a shared machine only ratios measured side by side mean anything.

    PYTHONPATH=src python bench/bench_analyses.py                     # r18, 3 rounds
    PYTHONPATH=src python bench/bench_analyses.py --models vit_tiny --analyses erf,attention --rounds 1
    PYTHONPATH=src python bench/bench_analyses.py --smoke             # CI: 64 images a split, 1 round (~1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from bench_common import device_name

from vvm.analyses import (
    ProbeParams,
    effective_receptive_fields,
    first_images,
    mean_attention_distance,
    probe_datamodule,
)
from vvm.cka import StreamingCKA
from vvm.data import DigitsDataModule
from vvm.models import create

TIMM_NAMES = {"vit_tiny": "vit_tiny_patch16_224"}


def build(name: str, dm: DigitsDataModule) -> torch.nn.Module:
    if name in TIMM_NAMES:
        model = create("timm", arch=TIMM_NAMES[name], num_classes=dm.num_classes, seed=0)
    else:
        model = create(name, num_classes=dm.num_classes, seed=0)
    model.set_data_normalization(dm.mean, dm.std)
    return model.eval()


def cka_pass(model, dm, layers: str) -> float:
    loader = dm.test_dataloader()
    metric = StreamingCKA(model.net, layers, max_batches=len(dm.cka_batches().plan))
    with torch.inference_mode(), metric.track():
        for images, _ in loader:
            model(images)
    return float(metric.compute().matrix.nanmean())


def variants(model, dm, layers: str, n_images: int) -> dict:
    """What each variant runs, and the images it reads."""
    n_train, n_test = len(dm.dataset("train")), len(dm.dataset("test"))
    return {
        "cka": (lambda: cka_pass(model, dm, layers), dm.cka_batches().n_examples),
        "erf": (
            lambda: effective_receptive_fields(model, layers, first_images(dm.cka_batches(), n_images)),
            n_images,
        ),
        "attention": (
            lambda: mean_attention_distance(model, first_images(dm.cka_batches(), n_images)),
            n_images,
        ),
        "probe": (lambda: probe_datamodule(model, layers, dm, ProbeParams()), n_train + n_test),
    }


def measure(model, dm, layers: str, n_images: int, rounds: int, only: list[str]) -> dict[str, list[float]]:
    """Seconds per variant per round, after a warm-up round, the variants back to back in each round."""
    runs = {k: v for k, v in variants(model, dm, layers, n_images).items() if k == "cka" or k in only}
    times: dict[str, list[float]] = {v: [] for v in runs}
    for r in range(rounds + 1):
        for name, (fn, _) in runs.items():
            t = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t)
    return times


def report(name: str, times: dict[str, list[float]], images: dict[str, int], only: list[str]) -> dict:
    row: dict = {"model": name}
    cka = times["cka"]
    print(f"{name}: cka pass {statistics.median(cka):.2f} s over {images['cka']} images")
    for v in only:
        ratios = [t / c for t, c in zip(times[v], cka)]
        row[v] = {
            "seconds": statistics.median(times[v]),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "images": images[v],
        }
        print(
            f"  {v:9s} {statistics.median(times[v]):7.2f} s = {row[v]['ratio']:.2f}x the CKA pass "
            f"({min(ratios):.2f}-{max(ratios):.2f}); reads {images[v]} images"
        )
    row["cka"] = {"seconds": statistics.median(cka), "images": images["cka"]}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="r18", help="comma-separated: vvm model names, or vit_tiny (timm)")
    p.add_argument("--layers", default="blocks")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-images", type=int, default=64, help="images of the ERF and attention (default 64)")
    p.add_argument(
        "--analyses", default="erf,attention,probe", help="which analyses to time (comma-separated)"
    )
    p.add_argument("--smoke", action="store_true", help="CI: 64 images per split, 8 ERF images, one round")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    dm = DigitsDataModule(limit=64 if args.smoke else None, eval_batch_size=256)
    rounds, n_images = (1, 8) if args.smoke else (args.rounds, args.n_images)
    print(f"{device_name(torch.device('cpu'))}, torch {torch.__version__}; layers {args.layers!r}")
    rows = []
    for name in args.models.split(","):
        model = build(name, dm)
        only = args.analyses.split(",")
        times = measure(model, dm, args.layers, n_images, rounds, only)
        images = {k: v[1] for k, v in variants(model, dm, args.layers, n_images).items()}
        rows.append(report(name, times, images, only))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(torch.device("cpu")), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
