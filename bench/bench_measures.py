"""Benchmark: ``measures=[cka,rsa,knn]`` against ``measures=[cka]`` on the same model, layers and batches, side by
side in one run (issue 17's cost target: at most 1.5x).

Workload: the CIFAR ResNet-18 (random init), the ``blocks`` layers (10), random CIFAR-shaped batches (default 256
images, 2 batches), float32, one device. Each round times, back to back and in a rotating order:

- forward: the bare forward passes (no hooks), for scale;
- cka: :class:`vvm.cka.StreamingSimilarity` with ``measures=["cka"]`` (what ``python -m vvm`` runs by default),
  the result computed;
- cka+rsa+knn: the same with ``measures=["cka", "rsa", "knn"]`` (RSA Spearman, kNN k = 10): one recorder, one
  forward per batch.

The table shows the median over rounds of each variant's time and of the ratios (cka+rsa+knn / cka, and each
pass / forward), with their range; on a shared machine only ratios measured side by side mean anything.

    PYTHONPATH=src python bench/bench_measures.py                  # r18, blocks, batch 256 x 2, 3 rounds, CPU
    PYTHONPATH=src python bench/bench_measures.py --batch 256 --batches 4 --rounds 5 --json out.json
    PYTHONPATH=src python bench/bench_measures.py --smoke          # CI: batch 16, one round (seconds)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_common import device_name, summary, sync

from vvm.cka import StreamingSimilarity
from vvm.models import create

VARIANTS = {"forward": None, "cka": ["cka"], "cka+rsa+knn": ["cka", "rsa", "knn"]}


def one_pass(model, inputs, layers: str, measures: list[str] | None, device) -> float:
    """Seconds for the forward passes over ``inputs``, with the measures' pass around them (or none)."""
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if measures is None:
            for x in inputs:
                model(x)
        else:
            metric = StreamingSimilarity(model, layers, measures=measures, max_batches=len(inputs)).to(device)
            with metric.track():
                for x in inputs:
                    model(x)
            results = metric.compute()
            assert all(r.n_batches == len(inputs) for r in results.values())
    sync(device)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create(args.model, num_classes=100, seed=0).net.to(device).eval()
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(args.batch, 3, 32, 32, generator=g).to(device) for _ in range(args.batches)]
    one_pass(model, inputs[:1], args.layers, VARIANTS["cka+rsa+knn"], device)  # warm-up (allocator, kernels)
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order between rounds
            times[name].append(one_pass(model, inputs, args.layers, VARIANTS[name], device))
    ratios = {
        "cka+rsa+knn / cka": [a / b for a, b in zip(times["cka+rsa+knn"], times["cka"])],
        "cka / forward": [a / b for a, b in zip(times["cka"], times["forward"])],
        "cka+rsa+knn / forward": [a / b for a, b in zip(times["cka+rsa+knn"], times["forward"])],
    }
    return {
        "device": device_name(device), "torch": torch.__version__, "model": args.model, "layers": args.layers,
        "batch": args.batch, "batches": args.batches, "rounds": args.rounds, "seconds": times, "ratios": ratios,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="r18")
    p.add_argument("--layers", default="blocks")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--smoke", action="store_true", help="batch 16, one batch, one round: that it runs")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.batches, args.rounds = 16, 1, 1
    out = run(args)
    print(f"{out['model']}, {out['layers']}, batch {out['batch']} x {out['batches']}, {out['device']}, "
          f"torch {out['torch']}, {out['rounds']} rounds")  # fmt: skip
    for name, secs in out["seconds"].items():
        print(f"  {name:<14} {summary(secs)} s")
    for name, values in out["ratios"].items():
        print(f"  {name:<24} {summary(values)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
