"""Benchmark: the CKA pipeline against the plain forward pass, and its error against float64.

For each model: the median time of a forward pass without hooks, the same forward pass under StreamingCKA
(precision exact and fast), their ratio, peak memory against the forward pass's (CUDA: max allocated; CPU: peak
RSS growth, Linux's VmHWM with every large allocation its own mapping; a fresh subprocess per variant), and the
max |CKA - reference| where the reference is computed in float64 from the same activations.

    python bench/bench_cka.py                       # r18, preset all, batch 256 on GPU / 64 on CPU
    python bench/bench_cka.py --models r18,vit_l32 --batch 256 --layers all
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
from bench_common import device_name, sync

import vvm.cka.recorder as recorder
from vvm.cka import StreamingCKA, resolve_layers
from vvm.cka.functional import centre_kernel, cka_from_hsic, hsic_normaliser
from vvm.models import create


def make_inputs(model_name: str, batch: int, n_batches: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = 32  # CIFAR-sized data for every model; ViT resizes on the device inside its preprocessing
    return [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(n_batches)]


def build(model_name: str, device: torch.device):
    model = create(model_name, num_classes=100, seed=0).to(device).eval()
    model.set_data_normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return model


def _one_round(model, inputs, layers, variant: str, device) -> tuple[float, StreamingCKA | None]:
    metric = None if variant == "forward" else StreamingCKA(model.net, layers, precision=variant).to(device)
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        if metric is None:
            for x in inputs:
                model(x)
        else:
            with metric.track():
                for x in inputs:
                    model(x)
        sync(device)
    return (time.perf_counter() - t0) / len(inputs), metric


def time_variant(
    model, inputs, layers, variant: str, repeats: int, device
) -> tuple[list[float], StreamingCKA | None]:
    """Per-batch seconds of ``repeats`` rounds after one warm-up round."""
    times, metric = [], None
    for r in range(repeats + 1):
        t, metric = _one_round(model, inputs, layers, variant, device)
        if r:
            times.append(t)
    return times, metric


def interleaved(model, inputs, layers, variants: list[str], repeats: int, device) -> dict[str, list[float]]:
    """The variants in turn, round after round, so that drift in the machine's speed hits all of them alike."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats + 1):
        for v in variants:
            t, _ = _one_round(model, inputs, layers, v, device)
            if r:
                times[v].append(t)
    return times


def reference(model, inputs, layers) -> tuple[list[str], torch.Tensor]:
    """float64 minibatch CKA from the same float32 activations: ``(layer names, matrix)``, each layer's Gram
    kept under its own name (a module that runs k times: ``name#0`` .. ``name#k-1``, as the recorder names
    them), stacked in the order of ``layers``, never in the order the hooks fire (a parent listed before its
    children fires after them). ``layers`` are modules of ``model.net`` (a VisionModel's) or of ``model``."""
    mods = dict(getattr(model, "net", model).named_modules())
    grams: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name: str):
        def keep(m, a, out) -> None:
            f = out.detach().double().reshape(out.shape[0], -1)
            f = f - f.mean(0, keepdim=True)
            grams[name].append((f @ f.T).cpu())

        return keep

    names: list[str] = []
    xy = None
    hs = [mods[n].register_forward_hook(hook(n)) for n in layers]
    try:
        for x in inputs:
            for kept in grams.values():
                kept.clear()
            with torch.no_grad():
                model(x)
            keyed = {
                (f"{n}#{i}" if len(grams[n]) > 1 else n): g for n in layers for i, g in enumerate(grams[n])
            }
            names = list(keyed)
            g = centre_kernel(torch.stack(list(keyed.values())), "unbiased").reshape(len(names), -1)
            prod = (g @ g.T) / hsic_normaliser(x.shape[0], "unbiased")
            xy = prod if xy is None else xy + prod
    finally:
        for h in hs:
            h.remove()
    assert xy is not None, "no inputs"
    return names, cka_from_hsic(xy, xy.diagonal(), xy.diagonal())


def max_error(result, ref: tuple[list[str], torch.Tensor]) -> float:
    """The largest |CKA − reference| over the result's layers, each entry matched by its layers' names."""
    names, matrix = ref
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in result.layers_x if n not in index]
    if missing or len(names) != len(result.layers_x):
        raise RuntimeError(
            f"the reference's layers {names[:4]}... differ from the result's (missing {missing[:4]})"
        )
    order = torch.tensor([index[n] for n in result.layers_x])
    aligned = matrix[order][:, order]
    return (result.matrix - aligned).abs().nan_to_num(0).max().item()


def timing_row(model, inputs, layers, args: argparse.Namespace, device) -> dict:
    """Per-batch seconds of the forward pass and of the two CKA variants, their ratios, and the max error."""
    times = interleaved(model, inputs, layers, ["forward", "exact", "fast"], args.repeats, device)
    ref = reference(model, inputs, layers)
    row = {"forward_s": statistics.median(times["forward"])}
    for variant in ("exact", "fast"):
        _, metric = _one_round(model, inputs, layers, variant, device)
        row[f"{variant}_s"] = statistics.median(times[variant])
        # the median of the per-round ratios: each round's variants ran back to back
        row[f"{variant}_ratio"] = statistics.median([t / f for t, f in zip(times[variant], times["forward"])])
        row[f"{variant}_max_err"] = max_error(metric.compute(), ref)
    return row


def memory_row(args: argparse.Namespace, name: str, n_layers: int) -> dict:
    """Peak memory (MiB) of each variant in a fresh process, against the forward pass + the Grams + 10%."""
    mem_f = peak_memory_child(args, name, "forward")
    grams = n_layers * args.batch**2 * 8 / 2**20  # the batch's kernel stack in float64
    row = {"forward_peak_mib": mem_f, "gram_mib": grams}
    for variant in ("exact", "fast"):
        mem = peak_memory_child(args, name, variant)
        row[f"{variant}_peak_mib"] = mem
        row[f"{variant}_mem_vs_budget"] = mem / ((mem_f + grams) * 1.10)
    return row


def peak_memory_child(args: argparse.Namespace, model_name: str, variant: str) -> float:
    """Peak memory (MiB) of one variant, measured in a fresh process so CPU peaks don't mix."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--models",
        model_name,
        "--batch",
        str(args.batch),
        "--layers",
        args.layers,
        "--batches",
        str(args.batches),
        "--device",
        args.device,
        *(["--chunk-elements", str(args.chunk_elements)] if args.chunk_elements else []),
    ]
    # every allocation of 64 KiB or more its own mapping: memory freed is memory returned, so the peak resident
    # set is the peak of what was allocated (the CPU measurement; CUDA has its allocator's statistics)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = (
        subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        .stdout.strip()
        .splitlines()[-1]
    )
    return float(out)


def child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model = build(args.models, device)
    layers = resolve_layers(model.net, args.layers)
    inputs = make_inputs(args.models, args.batch, args.batches, device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        time_variant(model, inputs, layers, args.child, 1, device)
        peak = torch.cuda.max_memory_allocated(device) - base
    elif _reset_peak_rss():
        # CPU: the peak resident set (Linux's VmHWM, reset just before) minus what it was before
        base = _status("VmRSS")
        time_variant(model, inputs, layers, args.child, 1, device)
        peak = _status("VmHWM") - base
    else:
        # elsewhere: the resident set, sampled every 0.2 ms while the variant runs, minus what it was before
        base = _rss()
        state = {"peak": base, "run": True}

        def sample() -> None:
            while state["run"]:
                state["peak"] = max(state["peak"], _rss())
                time.sleep(0.0002)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        time_variant(model, inputs, layers, args.child, 1, device)
        state["run"] = False
        t.join()
        peak = state["peak"] - base
    print(peak / 2**20)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated (default r18; r18,vit_l32 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 64 on CPU")
    p.add_argument(
        "--batches", type=int, default=None, help="batches per timed round (default 4 CUDA, 2 CPU)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10 CUDA, 3 CPU)")
    p.add_argument("--layers", default="all")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--memory-only", action="store_true", help="only the peak memory (no timings, no errors)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--chunk-elements",
        type=int,
        default=None,
        help="the hooks' column blocks, in elements (default: vvm's, 2^18 on a CPU, 2^26 on CUDA): smaller blocks "
        "hold a smaller centred copy of an activation, in more kernel launches",
    )
    args = p.parse_args()
    if args.chunk_elements:
        recorder.CPU_CHUNK_ELEMENTS = recorder.CUDA_CHUNK_ELEMENTS = args.chunk_elements
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (256 if cuda else 64)
    args.batches = args.batches or (4 if cuda else 2)
    args.repeats = args.repeats or (10 if cuda else 3)
    if args.child:
        return child(args)
    models = (args.models or ("r18,vit_l32" if cuda else "r18")).split(",")
    device = torch.device(args.device)
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch}; layers preset {args.layers!r}"
    )
    if args.chunk_elements:
        print(f"hooks' column blocks: {args.chunk_elements} elements")
    rows = []
    for name in models:
        model = build(name, device)
        layers = resolve_layers(model.net, args.layers)
        row = {"model": name, "layers": len(layers), "batch": args.batch}
        if not args.memory_only:
            inputs = make_inputs(name, args.batch, args.batches, device)
            row.update(timing_row(model, inputs, layers, args, device))
            del inputs
            print(
                f"{name:10s} {len(layers):3d} layers | forward {row['forward_s'] * 1e3:8.1f} ms | "
                f"exact {row['exact_s'] * 1e3:8.1f} ms = {row['exact_ratio']:.2f}x, max err {row['exact_max_err']:.1e} | "
                f"fast {row['fast_s'] * 1e3:8.1f} ms = {row['fast_ratio']:.2f}x, max err {row['fast_max_err']:.1e}"
            )
        del model
        if not args.no_memory:
            row.update(memory_row(args, name, len(layers)))
            print(
                f"{name:10s} {len(layers):3d} layers | peak memory MiB: forward {row['forward_peak_mib']:.0f}, "
                f"Grams {row['gram_mib']:.1f}, exact {row['exact_peak_mib']:.0f} "
                f"({row['exact_mem_vs_budget']:.2f} of forward+Grams+10%), fast {row['fast_peak_mib']:.0f} "
                f"({row['fast_mem_vs_budget']:.2f})"
            )
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device_name(device), "chunk_elements": args.chunk_elements, "rows": rows},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
