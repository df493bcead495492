"""The batch-size experiment of issue 27, rerun: mutual kNN on pools of a declared n does not move with
``similarity.batch_size``, and its interval covers the value on n images.

One model (the CIFAR ResNet-18, random init, ``blocks``), one set of images (the first ``--images`` digits of a
seeded permutation of scikit-learn's 1,797), k = 10:

1. before (issue 27's finding): kNN within each CKA batch, averaged, at batch sizes 16 ... 256: its level follows
   the batch size (chance k/(b-1));
2. now: kNN on pools of ``--n`` examples through the engine (:class:`vvm.cka.StreamingSimilarity` with the pass
   plan of :mod:`vvm.cka.pools`, the model run over the plan's units) at the same batch sizes: the same value,
   with its standard error over pools;
3. coverage: the value "on n images" is the expectation over random sets of n of the N images (estimated from
   ``--reference`` random sets); over ``--draws`` random orders of the N images, how often the t interval (95%,
   pools - 1 degrees of freedom) of the pooled estimate covers it, for the mean off-diagonal and for every entry
   (pools are disjoint draws from a finite set, so the interval is slightly conservative).

Sections 1 and 3 compute kNN from each layer's raw Gram of all N images (``vvm.cka.measures.knn``'s functions);
the engine's numbers of section 2 are checked against them (``max |engine - Gram|``).

    PYTHONPATH=src python bench/bench_knn_pools.py                    # 1024 images, n = 128, CPU (minutes)
    PYTHONPATH=src python bench/bench_knn_pools.py --smoke            # CI: 96 images, n = 32, seconds
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
from bench_common import device_name
from scipy.stats import t as student_t

from vvm.cka import StreamingSimilarity
from vvm.cka.measures.knn import cosine_similarities, neighbour_indicator
from vvm.cka.pools import plan_pass
from vvm.cka.presets import resolve_layers
from vvm.data.digits import DigitsDataModule, load_digits_uint8
from vvm.models import create

BATCHES = (16, 32, 64, 128, 256)


def load_images(count: int, seed: int) -> torch.Tensor:
    images, _, _ = load_digits_uint8()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    x = images[order].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (DigitsDataModule.mean, DigitsDataModule.std))
    return (x - mean) / std


def raw_grams(net: torch.nn.Module, layers: list[str], x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``[L, N, N]`` float64: each layer's Gram ``X Xᵀ`` of the raw features of all N images."""
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    named = dict(net.named_modules())
    hooks = [
        named[n].register_forward_hook(lambda m, a, out, n=n: feats[n].append(out.flatten(1).double()))
        for n in layers
    ]
    with torch.inference_mode():
        for i in range(0, len(x), chunk):
            net(x[i : i + chunk])
    for h in hooks:
        h.remove()
    out = []
    for name in layers:
        f = torch.cat(feats.pop(name))
        out.append(f @ f.T)
    return torch.stack(out)


def knn_matrix(grams: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """``[L, L]`` mutual kNN on the examples ``idx`` (no all-zero examples in these layers)."""
    a = neighbour_indicator(cosine_similarities(grams[:, idx][:, :, idx]), k).flatten(1)
    return a @ a.T / (len(idx) * k)


def off_mean(m: np.ndarray) -> float:
    return float(m[~np.eye(m.shape[-1], dtype=bool)].mean())


def per_batch(grams: torch.Tensor, order: torch.Tensor, b: int, k: int) -> tuple[float, float]:
    """Issue 27's 'before': kNN within balanced batches of ``b``, size-weighted mean and its standard error."""
    nb = math.ceil(len(order) / b)
    values, w = [], []
    for chunk in torch.tensor_split(order, nb):
        if len(chunk) > k:
            values.append(off_mean(knn_matrix(grams, chunk, k).numpy()))
            w.append(len(chunk))
    v, w = np.array(values), np.array(w, float)
    mean = (w * v).sum() / w.sum()
    se = (
        math.sqrt(len(v) / (len(v) - 1) * (w**2 * (v - mean) ** 2).sum()) / w.sum()
        if len(v) > 1
        else math.nan
    )
    return mean, se


def engine_pools(model, x: torch.Tensor, b: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN through the engine with the pass plan: ``(matrix, per-pool values)``."""
    plan = plan_pass(len(x), b, n)
    m = StreamingSimilarity(
        model, "blocks", measures=["cka", "knn"], params={"knn": {"k": k, "n": n}}, plan=plan
    )
    start = 0
    with torch.inference_mode(), m.track():
        for u, size in enumerate(plan.unit_sizes):
            m.recorder.set_next_batch_id(u)
            model(x[start : start + size])
            start += size
    res = m.compute()["knn"]
    return res.matrix.numpy(), res.batch_values.numpy()


def coverage(grams: torch.Tensor, n: int, k: int, draws: int, reference: int, seed: int) -> dict:
    """How often the pooled estimate's 95% t interval covers the expectation over random sets of n."""
    g = torch.Generator().manual_seed(seed)
    big = len(grams[0])
    ref = np.mean(
        [knn_matrix(grams, torch.randperm(big, generator=g)[:n], k).numpy() for _ in range(reference)], 0
    )
    pools = big // n
    q = student_t.ppf(0.975, pools - 1)
    hits_mean, hits_entries = 0, np.zeros_like(ref)
    for _ in range(draws):
        order = torch.randperm(big, generator=g)
        vals = np.stack([knn_matrix(grams, order[p * n : (p + 1) * n], k).numpy() for p in range(pools)])
        offs = np.array([off_mean(v) for v in vals])
        se = offs.std(ddof=1) / math.sqrt(pools)
        hits_mean += abs(offs.mean() - off_mean(ref)) <= q * se
        se_e = vals.std(0, ddof=1) / math.sqrt(pools)
        hits_entries += np.abs(vals.mean(0) - ref) <= q * se_e
    off = ~np.eye(ref.shape[0], dtype=bool)
    return {
        "reference_mean_offdiag": off_mean(ref), "pools_per_draw": pools, "draws": draws,
        "coverage_mean_offdiag": hits_mean / draws,
        "coverage_entries_median": float(np.median(hits_entries[off] / draws)),
        "coverage_entries_range": [float((hits_entries[off] / draws).min()), float((hits_entries[off] / draws).max())],
        "reference": ref,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = create("r18", num_classes=10, seed=0).net.eval()
    layers = resolve_layers(model, "blocks")
    x = load_images(args.images, args.seed)
    grams = raw_grams(model, layers, x)
    order = torch.arange(len(x))
    out: dict = {"device": device_name(torch.device("cpu")), "images": len(x), "n": args.n, "k": args.k}
    out["per_batch"] = {b: per_batch(grams, order, b, args.k) for b in args.batches}
    pooled, worst = {}, 0.0
    pools = [order[p * args.n : (p + 1) * args.n] for p in range(len(x) // args.n)]
    direct = np.stack([knn_matrix(grams, p, args.k).numpy() for p in pools])
    for b in args.batches:
        matrix, per_pool = engine_pools(model, x, b, args.n, args.k)
        offs = np.array([off_mean(v) for v in per_pool])
        pooled[b] = (
            off_mean(matrix),
            float(offs.std(ddof=1) / math.sqrt(len(offs))) if len(offs) > 1 else math.nan,
        )
        worst = max(worst, float(np.abs(per_pool - direct).max()))
    out["pooled"], out["engine_vs_gram_max_abs"] = pooled, worst
    out["chance"] = {
        "per_batch": {b: args.k / (b - 1) for b in args.batches},
        "pooled": args.k / (args.n - 1),
    }
    cov = coverage(grams, args.n, args.k, args.draws, args.reference, args.seed + 1)
    i, j = layers.index("layer4.1") if "layer4.1" in layers else -2, len(layers) - 1
    out["pair"] = f"{layers[i]}-{layers[j]}"
    out["pair_reference"] = float(cov.pop("reference")[i, j])
    out["coverage"] = cov
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--n", type=int, default=128, help="examples per pool")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--reference", type=int, default=1000, help="random sets of n for the value on n images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="96 images, n = 32, batches 16 and 32, 20 draws")
    args = p.parse_args()
    if args.smoke:
        args.images, args.n, args.batches, args.draws, args.reference = 96, 32, [16, 32], 20, 50
    out = run(args)
    print(f"r18 (random init), blocks, {out['images']} digits, k={out['k']}, {out['device']}")
    print("mean off-diagonal kNN    batch:  " + "  ".join(f"{b:>15}" for b in args.batches))
    print(
        "  within CKA batches (before):  "
        + "  ".join(f"{m:.3f} ± {s:.3f}".rjust(15) for m, s in out["per_batch"].values())
    )
    print(
        f"  pools of n={args.n} (now):        "
        + "  ".join(f"{m:.3f} ± {s:.3f}".rjust(15) for m, s in out["pooled"].values())
    )
    print(
        f"  chance k/(n-1): within batches {[round(c, 3) for c in out['chance']['per_batch'].values()]}, pools {out['chance']['pooled']:.3f}"
    )
    cov = out["coverage"]
    print(f"  engine vs Gram reference: max |diff| {out['engine_vs_gram_max_abs']:.1e}")
    print(
        f"value on {args.n} images (mean of {args.reference} random sets): mean off-diagonal {cov['reference_mean_offdiag']:.4f}, {out['pair']} {out['pair_reference']:.4f}"
    )
    print(f"95% interval coverage over {cov['draws']} draws ({cov['pools_per_draw']} pools each): mean off-diagonal "
          f"{cov['coverage_mean_offdiag']:.3f}, entries median {cov['coverage_entries_median']:.3f} "
          f"(range {cov['coverage_entries_range'][0]:.3f}-{cov['coverage_entries_range'][1]:.3f})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
