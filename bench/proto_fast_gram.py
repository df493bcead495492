"""Scratch: where vvm exact spends its time on the CPU, and prototypes of a faster Gram / per-batch tail.

Nothing here is imported by vvm: the prototypes are standalone functions and a StreamingCKA subclass that
swaps them in, so that they run through the same hooks, states and compute() as the real thing.

    PYTHONPATH=src python bench/proto_fast_gram.py profile [--rounds 3]   # instrumented vvm exact
    PYTHONPATH=src python bench/proto_fast_gram.py micro  [--reps 7]      # Gram variants on captured activations
    PYTHONPATH=src python bench/proto_fast_gram.py compare [--rounds 5]   # bench_peers harness, prototypes in

Measured on the shared 2-core EPYC (load average 6-9 from other jobs), `compare --rounds 5`, batch 64 x 4,
medians of per-round ratios to the bare forward (all in one run):
    vvm exact (current) 4.50x (err 1.2e-8) | A: current linear_gram on 1 intra-op thread 1.30x (1.2e-8)
    B: whole x - mean, one mm 1.97x | C: B on 1 thread 1.33x | D: 2^22-element blocks, 1 thread 1.47x
    pytorch-cka 1.1.3 (reimpl.) 1.61x (err 0.41)
profile: the Gram stage is ~2900 small ops per batch (722 column blocks x 4) at ~4 ms each under load (0.03 ms
alone): each is an OpenMP fork/join whose join waits for a descheduled worker. The float64 cast (0.3% of a
forward), the stack (0.0%), update() (1.3%) and compute() (0.0%) do not matter; no-op hooks cost 2.8%.
Shifting by x[0] without the mean fails exact mode (9e-7 to 1.3e-6 from float64).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as bp  # noqa: E402

import vvm.cka.streaming as vs  # noqa: E402
from vvm.cka import StreamingCKA  # noqa: E402
from vvm.cka.functional import flatten_features  # noqa: E402

# ================================================================================================ prototypes
# Every function returns the float32 n x n Gram of the (shifted) features; any per-column shift is fine for
# HSIC: U-centring (and H-centring, and RBF distances) remove the v_i + v_j terms that a column shift adds,
# so the shift only has to take the offset out before the float32 product rounds it.


def gram_current(x: Tensor) -> Tensor:
    """What vvm does now (functional.linear_gram with CPU_CHUNK_ELEMENTS = 2^18)."""
    return vs.linear_gram(x, chunk_elements=vs.CPU_CHUNK_ELEMENTS)


def gram_whole_mean(x: Tensor) -> Tensor:
    """The sketch: x - mean, one product (three ops per layer)."""
    x = flatten_features(x)
    xc = x - x.mean(0, keepdim=True)
    return xc @ xc.T


def gram_whole_row(x: Tensor) -> Tensor:
    """x - x[0] (no mean: the shift is free for HSIC), one product: two ops per layer, one read + one write."""
    x = flatten_features(x)
    xs = x - x[:1]
    return xs @ xs.T


def gram_blocked_row(x: Tensor, chunk_elements: int = 1 << 18, _buf: dict = {}) -> Tensor:  # noqa: B006
    """Column blocks, x[:, B] - x[0, B] written into one preallocated buffer, addmm: two ops per block."""
    x = flatten_features(x)
    n, d = x.shape
    cols = max(1, min(d, chunk_elements // max(n, 1)))
    if cols >= d:
        return gram_whole_row(x)
    key = (n, cols, x.dtype)
    buf = _buf.get(key)
    if buf is None:
        buf = _buf[key] = torch.empty(n, cols, dtype=x.dtype)
    k = torch.zeros(n, n, dtype=x.dtype)
    for start in range(0, d, cols):
        xb = x[:, start : start + cols]
        b = buf[:, : xb.shape[1]]
        torch.sub(xb, xb[:1], out=b)
        k.addmm_(b, b.T)
    return k


def gram_bmm_row(x: Tensor, blocks: int = 16) -> Tensor:
    """One sub writes the shifted features block-major [B, n, c], one bmm, one sum: three ops per layer."""
    x = flatten_features(x)
    n, d = x.shape
    b = blocks
    while d % b:
        b //= 2
    xb = x.view(n, b, d // b).transpose(0, 1)  # [B, n, c] view
    xs = torch.sub(xb, x[:1].view(1, b, d // b).transpose(0, 1))  # [B, n, c], contiguous
    return torch.bmm(xs, xs.transpose(1, 2)).sum(0)


def gram_bmm_mean(x: Tensor, blocks: int = 16) -> Tensor:
    """x - mean written block-major [B, n, c] by one sub, one bmm, one sum: four ops per layer."""
    x = flatten_features(x)
    n, d = x.shape
    b = blocks
    while d % b:
        b //= 2
    mean = x.mean(0, keepdim=True)
    xs = torch.sub(x.view(n, b, d // b).transpose(0, 1), mean.view(1, b, d // b).transpose(0, 1))
    return torch.bmm(xs, xs.transpose(1, 2)).sum(0)


def one_thread(fn):
    """Run ``fn`` on one intra-op thread: no OpenMP fork/join per op. On a shared, oversubscribed CPU every
    parallel region's join can wait a scheduler time slice for a descheduled worker thread."""

    def wrapped(x: Tensor) -> Tensor:
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(x)
        finally:
            torch.set_num_threads(prev)

    wrapped.__name__ = fn.__name__ + "_1thread"
    return wrapped


def gram_current_big_blocks(x: Tensor) -> Tensor:
    """functional.linear_gram unchanged (x - x[0], then - mean, per column block), blocks of 2^22 elements
    (16 MiB in float32: every layer of ResNet-18 CIFAR at batch 64 is one block, 4 ops per layer)."""
    return vs.linear_gram(x, chunk_elements=1 << 22)


GRAMS = {
    "current": gram_current,
    "current_2^22_1thread": one_thread(gram_current_big_blocks),
    "current_1thread": one_thread(gram_current),
    "whole_mean": gram_whole_mean,
    "whole_mean_1thread": one_thread(gram_whole_mean),
    "whole_row_1thread": one_thread(gram_whole_row),
    "bmm_mean_16": gram_bmm_mean,
    "bmm_mean_16_1thread": one_thread(gram_bmm_mean),
    "bmm_row_16": gram_bmm_row,
    "blocked_row_2^20": lambda x: gram_blocked_row(x, 1 << 20),
}


def u_centre_inplace(k: Tensor) -> Tensor:
    """U-centring of a stack [L, n, n] in place (k is a fresh stack the caller owns): 5 ops, no copies."""
    n = k.shape[-1]
    k.diagonal(dim1=-2, dim2=-1).zero_()
    r = k.sum(-1)  # [L, n]
    s = r.sum(-1, keepdim=True)  # [L, 1]
    # r_i/(n-2) - s/(2(n-1)(n-2)): subtracting it for i and for j adds s/((n-1)(n-2)) back once
    r = r.sub_(s / (2 * (n - 1))).div_(n - 2)
    k.sub_(r[:, :, None]).sub_(r[:, None, :])
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k


class ProtoCKA(StreamingCKA):
    """StreamingCKA with a prototype Gram in the hook and (optionally) a lean per-batch tail.

    ``tail=True``: the hooks keep float32 Grams, the stack is cast to float64 once, U-centred in place, one
    GEMM; the delta-method sums as before (they are L x L, negligible)."""

    def __init__(self, *args, gram=gram_current, tail: bool = False, **kw) -> None:
        self._gram = gram
        self._tail = tail
        super().__init__(*args, **kw)

    def layer_kernel(self, output: Tensor) -> Tensor:
        x = output.detach().reshape(output.shape[0], -1)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        k = self._gram(x)
        return k if self._tail else k.to(self._work_dtype)

    def update(self, kx: Tensor, ky: Tensor | None = None) -> None:
        if not (self._tail and ky is None and self.estimator == "unbiased" and self.kernel == "linear"):
            return super().update(kx, ky)
        n = kx.shape[-1]
        g = u_centre_inplace(kx.to(self._work_dtype)).reshape(kx.shape[0], -1)
        a = torch.mm(g, g.T).div_(n * (n - 3)).double()
        b = a.diagonal()
        self.hsic_xy += a
        self.hsic_xx += b
        self.hsic_yy += b
        self.sum_aa += a * a
        self.sum_ab += a * b[:, None]
        self.sum_ac += a * b[None, :]
        self.sum_bc += b[:, None] * b[None, :]
        bb = b * b
        self.sum_bb += bb
        self.sum_cc += bb
        self.n_batches += 1
        self.n_samples += n


# ================================================================================================ profile
def profile(args) -> None:
    """Instrumented vvm exact next to the bare forward and a forward with no-op hooks, interleaved rounds.

    linear_gram is replaced by a copy of itself that times its stages (same ops, same order); layer_kernel,
    _end_batch's stack, update() and compute() are timed around the real methods."""
    net = bp.build_net()
    layers = bp.peer_layers(net)
    inputs = bp.make_inputs(args.batch, args.batches)
    acc: dict[str, list[float]] = defaultdict(list)
    cur: dict[str, float] = defaultdict(float)
    pc = time.perf_counter

    def timed_linear_gram(x, *, chunk_elements=None):
        x = flatten_features(x)
        n, d = x.shape
        cols = d if chunk_elements is None else max(1, min(d, chunk_elements // max(n, 1)))
        t0 = pc()
        k = torch.zeros(n, n, dtype=x.dtype)
        cur["gram: zeros"] += pc() - t0
        for start in range(0, d, cols):
            t0 = pc()
            xb = x[:, start : start + cols]
            xs = xb - xb[:1]
            t1 = pc()
            m = xs.mean(dim=0, keepdim=True)
            t2 = pc()
            xc = xs - m
            t3 = pc()
            k.addmm_(xc, xc.T)
            t4 = pc()
            cur["gram: x - x[0] per block"] += t1 - t0
            cur["gram: mean per block"] += t2 - t1
            cur["gram: - mean per block"] += t3 - t2
            cur["gram: addmm per block"] += t4 - t3
            cur["gram: blocks (count)"] += 1
        return k

    def wrap(obj, name, label):
        orig = getattr(obj, name)

        def f(*a, **kw):
            t0 = pc()
            try:
                return orig(*a, **kw)
            finally:
                cur[label] += pc() - t0

        return f

    orig_stack = StreamingCKA._stack
    orig_update = StreamingCKA.update
    orig_lk = StreamingCKA.layer_kernel

    def lk(self, output):
        t0 = pc()
        x = output.detach().reshape(output.shape[0], -1)
        with vs._tf32(False, x.device):
            k = timed_linear_gram(x, chunk_elements=vs.CPU_CHUNK_ELEMENTS)
        t1 = pc()
        k = k.to(self._work_dtype)
        t2 = pc()
        cur["layer_kernel: float64 cast of the n x n Gram"] += t2 - t1
        cur["layer_kernel total"] += t2 - t0
        return k

    def noop_hooks(net):
        return bp.hook_all(net, layers, lambda name: lambda m, a, o: None)

    for r in range(args.rounds + 1):
        for variant in ("forward", "noop hooks", "vvm exact"):
            cur.clear()
            handles = noop_hooks(net) if variant == "noop hooks" else []
            if variant == "vvm exact":
                StreamingCKA._stack = wrap(StreamingCKA, "_stack", "end_batch: torch.stack of the Grams")
                StreamingCKA.update = lambda self, *a, _u=orig_update, **kw: _timed(self, _u, a, kw, cur)
                StreamingCKA.layer_kernel = lk
                m = StreamingCKA(net, layers, precision="exact")
            t0 = pc()
            with torch.no_grad():
                if variant == "vvm exact":
                    with m.track():
                        for x in inputs:
                            net(x)
                    t1 = pc()
                    m.compute()
                    cur["compute()"] += pc() - t1
                else:
                    for x in inputs:
                        net(x)
            total = pc() - t0
            StreamingCKA._stack, StreamingCKA.update, StreamingCKA.layer_kernel = (
                orig_stack,
                orig_update,
                orig_lk,
            )
            for h in handles:
                h.remove()
            if r:
                acc[f"{variant}: total"].append(total)
                for k, v in cur.items():
                    acc[f"{variant} | {k}"].append(v)
    fwd = statistics.median(acc["forward: total"])
    print(
        f"# {bp.describe()}; batch {args.batch} x {args.batches}; {len(layers)} layers; {args.rounds} rounds"
    )
    print(
        f"# medians over rounds; per round = {args.batches} batches; 'x fwd' = share of one bare forward pass"
    )
    print("| what | seconds | x fwd |\n| --- | --- | --- |")
    for k, v in acc.items():
        med = statistics.median(v)
        if "(count)" in k:
            print(f"| {k} | {med:.0f} | |")
        else:
            print(f"| {k} | {med:.3f} | {med / fwd:.3f} |")
    tot = statistics.median(acc["vvm exact: total"])
    lk_t = statistics.median(acc["vvm exact | layer_kernel total"])
    other = (
        tot
        - fwd
        - lk_t
        - sum(
            statistics.median(acc[f"vvm exact | {k}"])
            for k in (
                "update(): U-centring, GEMM, delta-method sums",
                "end_batch: torch.stack of the Grams",
                "compute()",
            )
        )
    )
    print(
        f"\n# vvm exact / forward = {tot / fwd:.2f}x; hook bookkeeping + noise (rest) = {other:.3f}s = {other / fwd:.3f} fwd"
    )


def _timed(self, upd, a, kw, cur):
    t0 = time.perf_counter()
    try:
        return upd(self, *a, **kw)
    finally:
        cur["update(): U-centring, GEMM, delta-method sums"] += time.perf_counter() - t0


# ================================================================================================ micro
def capture(net, layers, inputs) -> list[list[Tensor]]:
    """Each batch's activations (cloned in the hook, before any in-place op)."""
    acts: list[list[Tensor]] = []
    for x in inputs:
        got: dict[str, Tensor] = {}
        hs = bp.hook_all(
            net, layers, lambda name, got=got: lambda m, a, o: got.__setitem__(name, o.detach().clone())
        )
        with torch.no_grad():
            net(x)
        for h in hs:
            h.remove()
        acts.append([got[n] for n in layers])
    return acts


def cka_from_grams(grams: list[list[Tensor]]) -> Tensor:
    xy = 0
    for ks in grams:
        k = torch.stack(ks).double()
        n = k.shape[-1]
        g = u_centre_inplace(k).reshape(k.shape[0], -1)
        xy = xy + (g @ g.T) / (n * (n - 3))
    return bp.cka_from_sums(xy, xy.diagonal(), xy.diagonal())


def micro(args) -> None:
    """Every Gram variant on the captured activations of the workload, interleaved, median of reps; the
    error is the full minibatch CKA from its Grams (float64 from the Gram on) against the float64 oracle."""
    net = bp.build_net()
    layers = bp.peer_layers(net)
    inputs = bp.make_inputs(args.batch, args.batches)
    ref = bp.oracle(net, layers, inputs)
    acts = capture(net, layers, inputs)
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(args.reps + 1):
        for name, fn in GRAMS.items():
            t0 = time.perf_counter()
            for batch in acts:
                for a in batch:
                    fn(a)
            if r:
                times[name].append(time.perf_counter() - t0)
    # the forward pass itself, for scale
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in inputs:
                net(x)
        times["(bare forward)"].append(time.perf_counter() - t0)
    fwd = statistics.median(times["(bare forward)"])
    base = times["current"]
    print(f"# {bp.describe()}; all {len(layers)} layers' Grams of {args.batches} batches of {args.batch}")
    print("| Gram variant | s | x fwd | vs current (median of per-rep ratios) | CKA max err vs float64 |")
    print("| --- | --- | --- | --- | --- |")
    for name, ts in times.items():
        med = statistics.median(ts)
        if name == "(bare forward)":
            print(f"| {name} | {med:.3f} | 1.000 | | |")
            continue
        rat = statistics.median([t / b for t, b in zip(ts, base)])
        err = bp.max_err(cka_from_grams([[GRAMS[name](a) for a in batch] for batch in acts]), ref)
        print(f"| {name} | {med:.3f} | {med / fwd:.3f} | {rat:.2f} | {err:.1e} |")


# ================================================================================================ compare
def proto_tool(gram, tail):
    def make(net, layers):
        t = bp.VvmTool.__new__(bp.VvmTool)
        t.net = net
        t.m = ProtoCKA(net, layers, precision="exact", gram=gram, tail=tail)
        return t

    return make


def compare_tools() -> dict:
    return {
        "vvm exact (current)": bp.TOOLS["vvm exact"],
        "proto A: current Gram, 1 thread": proto_tool(one_thread(gram_current), False),
        "proto B: whole x - mean, one mm + lean tail": proto_tool(gram_whole_mean, True),
        "proto C: B on 1 thread": proto_tool(one_thread(gram_whole_mean), True),
        "proto D: current linear_gram, 2^22 blocks, 1 thread + lean tail": proto_tool(
            one_thread(gram_current_big_blocks), True
        ),
        "pytorch-cka 1.1.3 (reimpl.)": bp.PeerCKA,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("profile", "micro", "compare"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=bp.BATCH)
    p.add_argument("--batches", type=int, default=bp.N_BATCHES)
    args, rest = p.parse_known_args()
    if args.what == "profile":
        profile(args)
    elif args.what == "micro":
        micro(args)
    else:
        sys.argv = [
            sys.argv[0],
            *rest,
            "--rounds",
            str(args.rounds),
            "--batch",
            str(args.batch),
            "--batches",
            str(args.batches),
        ]
        bp.main(compare_tools(), doc=__doc__)


if __name__ == "__main__":
    main()
