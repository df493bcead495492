"""Benchmark: one joint CKA pass over M models against the M single-model passes and the M(M-1)/2 compare= runs
it replaces, on the same data (digits' CKA batches) and layers, random inits.

For each M the script times, in one run and in this order per round: the joint pass (:class:`vvm.cka.JointCKA`,
every model once per batch, one product), the M single-model passes (:class:`vvm.cka.StreamingCKA` on each model)
and the M(M-1)/2 pairwise passes (``StreamingCKA(a, other=b)``, both forward passes per batch, as ``compare=``
runs them). Reported: the median over rounds of each total and the ratios joint / Σ single (target ≤ 1.25) and
Σ compare / joint (target ≥ (M-1)/2). Also the largest difference between the joint blocks and the separate runs.

    python bench/bench_joint.py                               # M = 3 and 7, CPU
    python bench/bench_joint.py --ms 3,7,14 --device cuda --samples 512 --batch 256
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch
from bench_common import device_name, sync

from vvm.cka import JointCKA, StreamingCKA
from vvm.data import DigitsDataModule
from vvm.models import create

# M models: CIFAR ResNets of three depths, seeds 0, 1, 2, ... (random inits)
ARCHS = ("r18", "r34", "r50")


def build(m: int, device: torch.device, archs: tuple[str, ...]) -> dict:
    dm = DigitsDataModule()
    models = {}
    for i in range(m):
        arch = archs[i % len(archs)]
        model = create(arch, num_classes=10, seed=i // len(archs)).to(device).eval()
        model.set_data_normalization(dm.mean, dm.std)
        models[f"{arch}-s{i // len(archs)}"] = model
    return models


def batches(samples: int, batch: int, device: torch.device) -> list[torch.Tensor]:
    dm = DigitsDataModule(eval_batch_size=batch, max_samples=samples)
    return [x.to(device) for x, _ in dm.cka_batches()]


def timed(fn, device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def joint_pass(models, xs, layers):
    m = JointCKA(models, layers).to(xs[0].device)
    with m.track():
        for x in xs:
            m.feed(x)
    return m.compute()


def pair_pass(a, b, xs, layers):
    m = StreamingCKA(a.net, layers, other=None if b is None else b.net).to(xs[0].device)
    with m.track(), torch.no_grad():
        for x in xs:
            a(x)
            if b is not None:
                b(x)
    return m.compute()


def one_round(models, xs, layers, device) -> dict:
    t_joint, res = timed(lambda: joint_pass(models, xs, layers), device)
    t_single, err = 0.0, 0.0
    for k, model in models.items():
        t, single = timed(lambda model=model: pair_pass(model, None, xs, layers), device)
        t_single += t
        err = max(err, float((res.block(k, k) - single.matrix).abs().max()))
    t_pairs = 0.0
    for (ka, a), (kb, b) in itertools.combinations(models.items(), 2):
        t, cross = timed(lambda a=a, b=b: pair_pass(a, b, xs, layers), device)
        t_pairs += t
        err = max(err, float((res.block(ka, kb) - cross.matrix).abs().max()))
    return {"joint": t_joint, "single": t_single, "compare": t_pairs, "max_err": err}


def bench(m: int, args, device) -> dict:
    models = build(m, device, tuple(args.archs.split(",")))
    xs = batches(args.samples, args.batch, device)
    pair_pass(next(iter(models.values())), None, xs[:1], args.layers)  # warm-up
    rounds = [one_round(models, xs, args.layers, device) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in ("joint", "single", "compare")}
    n_layers = sum(len(StreamingCKA(mo.net, args.layers).layers_x) for mo in models.values())
    return {
        "M": m,
        "models": list(models),
        "layers": n_layers,
        "samples": sum(len(x) for x in xs),
        "batches": len(xs),
        **{f"{k}_s": round(v, 2) for k, v in med.items()},
        "joint_over_single": round(med["joint"] / med["single"], 3),
        "compare_over_joint": round(med["compare"] / med["joint"], 2),
        "target_speedup": (m - 1) / 2,
        "max_err": max(r["max_err"] for r in rounds),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ms", default="3,7", help="numbers of models")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", default="blocks")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    rows = []
    for m in (int(s) for s in args.ms.split(",")):
        row = bench(m, args, device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(device), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
