"""Benchmark: ``measures=[cka,rsa,knn]`` against ``measures=[cka]`` on the same model, layers and images, side by
side in one run (issue 27's cost target: at most 1.5x at n = 1024).

Workload: the CIFAR ResNet-18 (random init), the ``blocks`` layers (10), ``--pools`` x ``--n`` random CIFAR-shaped
images (default 1 x 1024), float32, one device. Each round times, back to back and in a rotating order:

- forward: the bare forward passes in CKA's batches (``--batch``, default 64; no hooks), for scale;
- cka: :class:`vvm.cka.StreamingSimilarity` with ``measures=["cka"]`` (what ``python -m vvm`` runs by default)
  over CKA's batches, the result computed;
- cka+rsa+knn: ``measures=["cka", "rsa", "knn"]`` (RSA Spearman on correlation RDMs, kNN k = 10) with the pass
  plan of :mod:`vvm.cka.pools` (what a job runs): one forward per pool of ``n`` images, each layer's ``n x n``
  Gram, RSA and kNN on it and CKA on its batches (the Gram's diagonal blocks).

The table shows the median over rounds of each variant's time and of the ratios (cka+rsa+knn / cka, and each
pass / forward), with their range; on a shared machine only ratios measured side by side mean anything.

    PYTHONPATH=src python bench/bench_measures.py                  # r18, blocks, n 1024 x 1, batch 64, 3 rounds
    PYTHONPATH=src python bench/bench_measures.py --n 1024 --pools 2 --batch 256 --rounds 5 --json out.json
    PYTHONPATH=src python bench/bench_measures.py --smoke          # CI: n 32, batch 16, one round (seconds)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_common import device_name, summary, sync

from vvm.cka import StreamingSimilarity
from vvm.cka.pools import PassPlan, plan_pass
from vvm.models import create

VARIANTS = {"forward": None, "cka": ["cka"], "cka+rsa+knn": ["cka", "rsa", "knn"]}


def units(images: torch.Tensor, plan: PassPlan | None, batch: int) -> list[torch.Tensor]:
    """The forward batches: the plan's units, or CKA's batches."""
    sizes = plan.unit_sizes if plan is not None else [batch] * (len(images) // batch)
    return list(torch.split(images, list(sizes)))


def one_pass(model, images, layers: str, measures: list[str] | None, device, batch: int, n: int) -> float:
    """Seconds for the forward passes over ``images``, with the measures' pass around them (or none)."""
    plan = plan_pass(len(images), batch, n) if measures and len(measures) > 1 else None
    inputs = units(images, plan, batch)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if measures is None:
            for x in inputs:
                model(x)
        else:
            metric = StreamingSimilarity(
                model, layers, measures=measures, max_batches=len(inputs), plan=plan,
                params={m: {"n": n} for m in measures if m != "cka"},
            ).to(device)  # fmt: skip
            with metric.track():
                for u, x in enumerate(inputs):
                    metric.recorder.set_next_batch_id(u)
                    model(x)
            results = metric.compute()
            assert results["cka"].n_samples == len(images)
    sync(device)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create(args.model, num_classes=100, seed=0).net.to(device).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.pools * args.n, 3, 32, 32, generator=g).to(device)
    warm = images[: max(args.batch, min(args.n, 64))]
    one_pass(model, warm, args.layers, VARIANTS["cka+rsa+knn"], device, args.batch, len(warm))  # warm-up
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order between rounds
            times[name].append(
                one_pass(model, images, args.layers, VARIANTS[name], device, args.batch, args.n)
            )
    ratios = {
        "cka+rsa+knn / cka": [a / b for a, b in zip(times["cka+rsa+knn"], times["cka"])],
        "cka / forward": [a / b for a, b in zip(times["cka"], times["forward"])],
        "cka+rsa+knn / forward": [a / b for a, b in zip(times["cka+rsa+knn"], times["forward"])],
    }
    return {
        "device": device_name(device), "torch": torch.__version__, "model": args.model, "layers": args.layers,
        "batch": args.batch, "n": args.n, "pools": args.pools, "rounds": args.rounds, "seconds": times,
        "ratios": ratios,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="r18")
    p.add_argument("--layers", default="blocks")
    p.add_argument("--batch", type=int, default=64, help="CKA's batch size (similarity.batch_size)")
    p.add_argument("--n", type=int, default=1024, help="examples per pool (measure.rsa.n, measure.knn.n)")
    p.add_argument("--pools", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--smoke", action="store_true", help="n 32, batch 16, one round: that it runs")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.n, args.pools, args.rounds = 16, 32, 1, 1
    out = run(args)
    print(f"{out['model']}, {out['layers']}, {out['pools']} x {out['n']} images, batch {out['batch']}, {out['device']}, "
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
