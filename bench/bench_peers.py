"""vvm against its peers on CPU, side by side in one run (issue 13, the CPU part).

Workload: torchvision ResNet-18 with the CIFAR stem (conv1 3x3 stride 1, maxpool = Identity, 100 classes),
random init, eval mode, 49 layers (every conv, every BN, every residual block layerX.Y and the head fc),
float32 inputs of batch 64, 4 batches per round.

Every tool is timed as (its time for the 4 batches, result included) / (the BARE network's forward pass over the
same 4 batches: no hooks, no vvm preprocessing, torch.no_grad). The tools run interleaved batch by batch
(batch 1: forward, vvm exact, vvm fast, peer, sketch; batch 2: forward, ...), over >= 5 rounds after a warm-up
round, and the table shows the median of the per-round ratios (and their range): on a shared, noisy machine
only ratios measured side by side mean anything.

- vvm exact / fast: ``StreamingCKA(net, layers, precision=...)``, ``with m.track(): net(x)``, ``m.compute()``.
- pytorch-cka 1.1.3: its published algorithm, reimplemented here in a few lines (:class:`PeerCKA`): the hooks
  keep each layer's flattened output (a view, as pytorch-cka does, so a later in-place op in the forward
  pass, e.g. ``ReLU(inplace=True)`` or ``out += identity``, changes what it sees); after the forward pass one
  uncentred Gram per layer in the activation dtype, its all-pairs HSIC₁ formula
  (``trace(K L) - diag·diag + ΣK ΣL/((n-1)(n-2)) - 2/(n-2) colsum·colsum``, over ``n(n-3)``), float32 sums,
  and CKA clamped to [0, 1].
- sketch: column-centred float32 Gram in the hook, one GEMM for all pairs at the end of each batch, float64
  accumulation (:class:`SketchCKA`, about 40 lines).
- oracle: minibatch CKA (unbiased HSIC₁, sums over batches) in float64 from the same activations (its own
  hooks compute a float64 centred Gram at once, before any in-place op); every tool's max |error| is against it.

    PYTHONPATH=src python bench/bench_peers.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from bench_common import device_name
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from vvm.cka import StreamingCKA, recorder

BATCH = 64
N_BATCHES = 4


# ----------------------------------------------------------------------------------------------- workload
def build_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=100)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net.eval()


def peer_layers(net: nn.Module) -> list[str]:
    """Every conv, every BN, every residual block (layerX.Y) and the head fc, in forward order."""
    kinds = (nn.Conv2d, nn.BatchNorm2d, BasicBlock, nn.Linear)
    return [name for name, m in net.named_modules() if name and isinstance(m, kinds)]


def make_inputs(batch: int = BATCH, n_batches: int = N_BATCHES, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(n_batches)]


def hook_all(net: nn.Module, layers: list[str], fn: Callable) -> list:
    mods = dict(net.named_modules())
    return [mods[name].register_forward_hook(fn(name)) for name in layers]


def cka_from_sums(xy: Tensor, xx: Tensor, yy: Tensor) -> Tensor:
    out = xy / torch.sqrt(xx.clamp_min(0)[:, None] * yy.clamp_min(0)[None, :])
    return out.masked_fill((xx <= 0)[:, None] | (yy <= 0)[None, :], float("nan"))


# ----------------------------------------------------------------------------------------------- oracle
def oracle(net: nn.Module, layers: list[str], inputs: list[Tensor]) -> Tensor:
    """float64 minibatch CKA (unbiased HSIC₁, GUIDE section 2), written independently of vvm."""
    grams: dict[str, Tensor] = {}  # by name: a block's hook runs after its children's

    def fn(name):
        def hook(m, a, out):
            f = out.detach().double().reshape(out.shape[0], -1)
            f = f - f.mean(0, keepdim=True)
            grams[name] = f @ f.T

        return hook

    L = len(layers)
    xy = torch.zeros(L, L, dtype=torch.float64)
    handles = hook_all(net, layers, fn)
    try:
        for x in inputs:
            grams.clear()
            with torch.no_grad():
                net(x)
            n = x.shape[0]
            k = torch.stack([grams[name] for name in layers])
            k = k * (1 - torch.eye(n, dtype=k.dtype))
            r = k.sum(-1)
            s = r.sum(-1)
            kt = (
                k
                - r[:, :, None] / (n - 2)
                - r[:, None, :] / (n - 2)
                + (s / ((n - 1) * (n - 2)))[:, None, None]
            )
            kt = kt * (1 - torch.eye(n, dtype=k.dtype))
            g = kt.reshape(L, -1)
            xy += (g @ g.T) / (n * (n - 3))
    finally:
        for h in handles:
            h.remove()
    return cka_from_sums(xy, xy.diagonal(), xy.diagonal())


# ----------------------------------------------------------------------------------------------- tools
# A tool: built before the clock starts; ``step(x)`` registers its hooks, runs the batch and removes them;
# ``result()`` returns the CKA matrix. The harness interleaves the tools batch by batch.
class VvmTool:
    def __init__(
        self,
        net: nn.Module,
        layers: list[str],
        precision: str,
        gram_threads: int | None = None,
        chunk: int | None = None,
    ) -> None:
        self.net = net
        self.m = StreamingCKA(net, layers, precision=precision)
        self.settings = {
            "CPU_GRAM_THREADS": gram_threads,
            "CPU_CHUNK_ELEMENTS": chunk or recorder.CPU_CHUNK_ELEMENTS,
        }

    def step(self, x: Tensor) -> None:
        prev = {k: getattr(recorder, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(recorder, k, v)
        try:
            with torch.no_grad(), self.m.track():
                self.net(x)
        finally:
            for k, v in prev.items():
                setattr(recorder, k, v)

    def result(self) -> Tensor:
        return self.m.compute().matrix


class PeerCKA:
    """pytorch-cka 1.1.3's published algorithm (same model on both sides, same layer list), reimplemented."""

    def __init__(self, net: nn.Module, layers: list[str], clone: bool = False) -> None:
        self.net, self.layers, self.clone = net, layers, clone
        self.xy = torch.zeros(len(layers), len(layers))  # float32 sums, as pytorch-cka

    def step(self, x: Tensor) -> None:
        feats: dict[str, Tensor] = {}

        def fn(name):
            def hook(m, a, out):
                f = out.detach().flatten(1)
                feats[name] = f.clone() if self.clone else f  # pytorch-cka keeps the view

            return hook

        handles = hook_all(self.net, self.layers, fn)
        try:
            with torch.inference_mode():
                self.net(x)
                k = torch.stack([feats[name] @ feats[name].T for name in self.layers])  # uncentred
                n = k.shape[-1]
                diag = k.diagonal(dim1=-2, dim2=-1)
                tot = k.sum(dim=(-2, -1)) - diag.sum(-1)
                col = k.sum(dim=-2) - diag
                trace = torch.einsum("aij,bij->ab", k, k) - diag @ diag.T
                h = trace + torch.outer(tot, tot) / ((n - 1) * (n - 2)) - (2 / (n - 2)) * (col @ col.T)
                self.xy += h / (n * (n - 3))
        finally:
            for hd in handles:
                hd.remove()

    def result(self) -> Tensor:
        d = self.xy.diagonal()
        den = torch.sqrt(torch.clamp(d[:, None] * d[None, :], min=0.0))
        den = torch.where(den == 0, 1e-6, den)
        return torch.clamp(self.xy / den, 0.0, 1.0).double()


class SketchCKA:
    """The ~40-line sketch: centred float32 Gram in the hook, one GEMM for all pairs per batch, float64 sums."""

    def __init__(self, net: nn.Module, layers: list[str]) -> None:
        self.net, self.layers = net, layers
        self.xy = torch.zeros(len(layers), len(layers), dtype=torch.float64)

    def step(self, x: Tensor) -> None:
        grams: dict[str, Tensor] = {}

        def fn(name):
            def hook(m, a, out):
                x = out.detach().reshape(out.shape[0], -1)
                xc = x - x.mean(0, keepdim=True)
                grams[name] = xc @ xc.T

            return hook

        handles = hook_all(self.net, self.layers, fn)
        try:
            with torch.no_grad():
                self.net(x)
                k = torch.stack([grams[name] for name in self.layers])
                n = k.shape[-1]
                k.diagonal(dim1=-2, dim2=-1).zero_()
                r = k.sum(-1)
                s = r.sum(-1)
                k -= r[:, :, None] / (n - 2)
                k -= r[:, None, :] / (n - 2)
                k += (s / ((n - 1) * (n - 2)))[:, None, None]
                k.diagonal(dim1=-2, dim2=-1).zero_()
                g = k.reshape(len(self.layers), -1)
                self.xy += (g @ g.T).double() / (n * (n - 3))
        finally:
            for hd in handles:
                hd.remove()

    def result(self) -> Tensor:
        return cka_from_sums(self.xy, self.xy.diagonal(), self.xy.diagonal())


class ForwardTool:
    def __init__(self, net: nn.Module, layers: list[str]) -> None:
        self.net = net

    def step(self, x: Tensor) -> None:
        with torch.no_grad():
            self.net(x)

    def result(self) -> None:
        return None


TOOLS: dict[str, Callable] = {
    "vvm exact": lambda net, layers: VvmTool(net, layers, "exact"),
    "vvm exact, 1 Gram thread": lambda net, layers: VvmTool(net, layers, "exact", gram_threads=1),
    "vvm exact, 2^20-element blocks": lambda net, layers: VvmTool(net, layers, "exact", chunk=1 << 20),
    "vvm exact, whole layers": lambda net, layers: VvmTool(net, layers, "exact", chunk=1 << 40),
    "vvm fast": lambda net, layers: VvmTool(net, layers, "fast"),
    "pytorch-cka 1.1.3 (reimpl.)": PeerCKA,
    "sketch (centred f32 Gram, one GEMM)": SketchCKA,
}


# ----------------------------------------------------------------------------------------------- harness
def run_tool(tool, inputs: list[Tensor]) -> Tensor | None:
    for x in inputs:
        tool.step(x)
    return tool.result()


def interleaved(
    net: nn.Module, layers: list[str], inputs: list[Tensor], tools: dict[str, Callable], rounds: int
) -> tuple[dict[str, list[float]], dict[str, Tensor]]:
    """Seconds per round (all batches plus the result) of the bare forward and of every tool, after one warm-up
    round. Interleaved batch by batch (batch 1: forward, tool 1, tool 2, ...; batch 2: ...), so that the load
    that other jobs put on a shared machine, which swings within seconds, hits every tool alike. Returns the
    times and each tool's last result."""
    names = ["forward", *tools]
    makers = {"forward": ForwardTool, **tools}
    times: dict[str, list[float]] = {k: [] for k in names}
    results: dict[str, Tensor] = {}
    for r in range(rounds + 1):
        objs = {k: makers[k](net, layers) for k in names}
        spent = dict.fromkeys(names, 0.0)
        for x in inputs:
            for k in names:
                t0 = time.perf_counter()
                objs[k].step(x)
                spent[k] += time.perf_counter() - t0
        for k in names:
            t0 = time.perf_counter()
            out = objs[k].result()
            spent[k] += time.perf_counter() - t0
            if out is not None:
                results[k] = out
            if r:
                times[k].append(spent[k])
    return times, results


def max_err(a: Tensor, ref: Tensor) -> float:
    return (a.double() - ref).abs().nan_to_num(0.0).max().item()


def summarise(times: dict[str, list[float]], results: dict[str, Tensor], ref: Tensor) -> list[dict]:
    fwd = times["forward"]
    rows = [{"tool": "bare forward", "seconds": statistics.median(fwd), "ratio": 1.0, "max_err": None}]
    for name, ts in times.items():
        if name == "forward":
            continue
        ratios = [t / f for t, f in zip(ts, fwd)]
        rows.append(
            {
                "tool": name,
                "seconds": statistics.median(ts),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "max_err": max_err(results[name], ref),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| tool | s / round | time / bare forward (median; min-max) | max abs error vs float64 |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        spread = f" ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if "ratio_min" in r else ""
        err = "-" if r["max_err"] is None else f"{r['max_err']:.1e}"
        lines.append(f"| {r['tool']} | {r['seconds']:.3f} | {r['ratio']:.2f}x{spread} | {err} |")
    return "\n".join(lines)


def describe() -> str:
    return (
        f"{device_name(torch.device('cpu'))}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    )


def main(tools: dict[str, Callable] | None = None, doc: str | None = None) -> None:
    p = argparse.ArgumentParser(
        description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--batches", type=int, default=N_BATCHES)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    tools = tools or TOOLS
    net = build_net()
    layers = peer_layers(net)
    inputs = make_inputs(args.batch, args.batches)
    print(f"# {describe()}")
    print(
        f"# ResNet-18 CIFAR stem, random init, eval; batch {args.batch} x {args.batches} batches; {len(layers)} layers:"
    )
    print("# " + " ".join(layers))
    times, results = interleaved(net, layers, inputs, tools, args.rounds)
    ref = oracle(net, layers, inputs)
    rows = summarise(times, results, ref)
    print(markdown(rows))
    notes = {}
    if tools is TOOLS:
        # what the peer's error is made of: the same algorithm on cloned features (no in-place aliasing)
        clone_err = max_err(run_tool(PeerCKA(net, layers, clone=True), inputs), ref)
        notes["peer_err_with_cloned_features"] = clone_err
        print(
            f"\n# pytorch-cka's algorithm on cloned features (no in-place aliasing): max error {clone_err:.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": describe(),
                    "batch": args.batch,
                    "batches": args.batches,
                    "rounds": args.rounds,
                    "layers": layers,
                    "rows": rows,
                    "times": times,
                    **notes,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
