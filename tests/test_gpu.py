"""The CUDA path (run with `pytest -m gpu` on a machine with a GPU; skipped elsewhere): exactness of the hooks on
the device, the TF32 switch with real CUDA products, bf16 autocast sealed off, and `trainer=gpu` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference as ref
import torch
from helpers import Capture, run_vvm

from vvm.cka import StreamingCKA
from vvm.cka.precision import matmul_precision
from vvm.models import create

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LAYERS = ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.1", "fc"]


def _run_on_cuda(precision, autocast=False, batches=3, n=128):
    model = create("r18", num_classes=10, seed=0).eval().cuda()
    cap = Capture(model.net, LAYERS, to_cpu_double=True)
    m = StreamingCKA(model.net, LAYERS, precision=precision)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad(), m.track():
        for _ in range(batches):
            x = torch.randn(n, 3, 32, 32, device="cuda", generator=g)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                model(x)
    cap.close()
    res = m.compute()
    feats = [[cap.outs[k][b] for k in LAYERS] for b in range(batches)]
    return res, ref.minibatch_cka(feats, feats)


@pytest.mark.parametrize("precision,tol", [("exact", 1e-6), ("fast", 1e-4)])
def test_cuda_hooks_match_float64(precision, tol):
    prev = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # a user's global choice must not leak into exact mode
    try:
        res, want = _run_on_cuda(precision)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # and is left as it was
    finally:
        torch.backends.cuda.matmul.fp32_precision = prev
    assert np.nanmax(np.abs(res.matrix.numpy() - want)) <= tol


def test_cuda_hooks_sealed_under_bf16_autocast():
    with pytest.warns(UserWarning, match="bfloat16"):
        res, want = _run_on_cuda("exact", autocast=True)
    assert res.activation_dtype == "bfloat16"
    assert np.nanmax(np.abs(res.matrix.numpy() - want)) <= 1e-6


def test_tf32_switch_changes_cuda_products_and_restores():
    a = torch.randn(512, 512, device="cuda")
    exact = (a.double() @ a.double()).float()
    with matmul_precision(False):
        e_ieee = (a @ a - exact).abs().max().item()
    with matmul_precision(True):
        e_tf32 = (a @ a - exact).abs().max().item()
    assert e_ieee < e_tf32  # TF32 really is on inside fast mode, off inside exact
    assert torch.backends.cuda.matmul.fp32_precision in ("none", "ieee")


def test_trainer_gpu_end_to_end(tmp_path):
    args = [
        "model=r18",
        "init=pretrained",
        "dataset=synthetic",
        "train.epochs=1",
        "trainer=gpu",
        "logger=none",
        f"paths.checkpoints={tmp_path / 'ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    run_vvm(args, cwd=tmp_path, timeout=600)
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "ok" and res["trained"] is True
    assert res["activation_dtype"] == "float32"  # the CKA pass runs in float32 under trainer=gpu


def test_cka_batches_do_not_synchronise_with_the_host():
    """Issue 22: after the first batch, a CKA batch (ViT preprocessing with renormalisation, hooks, deferred
    finiteness marks, update) never makes the host wait for the device."""
    model = (
        create("timm", arch="vit_tiny_patch16_224", num_classes=10, timm_kwargs={"img_size": 32})
        .cuda()
        .eval()
    )
    model.set_data_normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    m = StreamingCKA(model.net, "blocks", max_batches=3).cuda()
    xs = [torch.randn(64, 3, 32, 32, device="cuda") for _ in range(3)]
    with torch.no_grad(), m.track():
        model(xs[0])
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x in xs[1:]:
                model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert m.compute().n_batches == 3


def test_cka_tf32_off_runs_convolutions_in_ieee_float32():
    """Issue 22: under similarity.tf32=off the pass's convolutions are IEEE float32 (close to float64); under allow (PyTorch's
    default) cuDNN may use TF32. Prints both errors for docs/benchmarks.md."""
    from vvm.cka.precision import float32_precision, pass_float32

    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda()
    x = torch.randn(32, 64, 32, 32, device="cuda")
    want = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    errors = {}
    for mode in ("allow", "off"):
        with torch.no_grad(), pass_float32(mode):
            errors[mode] = ((conv(x).double() - want).abs().max() / want.abs().max()).item()
            errors[mode + "_flags"] = float32_precision("cuda")
    print("relative conv error vs float64:", errors)
    assert errors["off_flags"] == {"conv": "ieee", "matmul": "ieee"}
    assert errors["off"] < 1e-5
