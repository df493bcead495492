"""bench/bench_cka.py's float64 reference: each layer's Gram kept under its name, so a layer list with a parent
before its children (whose hooks fire first, as ViT's `all` preset lists them) gives the reference in the list's
order, and the benchmark's max error compares entries by name (issue 27: ViT-L/32 `all` reported 2.0)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from vvm.cka import StreamingCKA
from vvm.cka.pair import cka

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_cka():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("bench_cka")


def parent_first_net() -> nn.Module:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), block, nn.Linear(4, 3)).double().eval()


# the parent "2" is listed before its children "2.0" and "2.2", whose hooks fire before its own
LAYERS = ["0", "2", "2.0", "2.2", "3"]


def test_reference_is_in_the_order_of_the_layer_list_not_of_the_hooks():
    bench = bench_cka()
    net = parent_first_net()
    inputs = [
        torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    names, matrix = bench.reference(net, inputs, LAYERS)
    assert names == LAYERS
    # one batch: the reference's entries against the one-pair CKA of the layers' own outputs, by name
    names1, m1 = bench.reference(net, inputs[:1], LAYERS)
    outs = {}
    hooks = [
        dict(net.named_modules())[n].register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o))
        for n in LAYERS
    ]
    with torch.no_grad():
        net(inputs[0])
    for h in hooks:
        h.remove()
    for i, a in enumerate(LAYERS):
        for j, b in enumerate(LAYERS):
            assert abs(float(m1[i, j]) - float(cka(outs[a], outs[b]))) < 1e-10, (a, b)
    # the parent's Gram differs from its first child's: a reference in hook order would not match
    assert abs(float(m1[1, 2]) - 1.0) > 1e-3
    # and the benchmark's error of StreamingCKA against it is at rounding level
    metric = StreamingCKA(net, LAYERS)
    with torch.no_grad(), metric.track():
        for x in inputs:
            net(x)
    assert bench.max_error(metric.compute(), (names, matrix)) < 1e-6
