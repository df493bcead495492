"""`python -m vvm` end to end on synthetic data: every output file checked."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from helpers import run_vvm

from vvm.io import load_npz

SMALL = [
    "dataset=synthetic",
    "dataset.train_size=64",
    "dataset.test_size=80",
    "similarity.batch_size=32",
    "logger=none",
    "trainer=cpu",
]


def test_cli_writes_every_output(tmp_path):
    out = tmp_path / "run"
    proc = run_vvm([*SMALL, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert "Testing" in proc.stderr + proc.stdout  # the progress bar over the batches

    z = load_npz(out / "cka.npz")
    layers = [
        "stem",
        "layer1.0",
        "layer1.1",
        "layer2.0",
        "layer2.1",
        "layer3.0",
        "layer3.1",
        "layer4.0",
        "layer4.1",
        "fc",
    ]
    assert list(z["layers_x"]) == layers and list(z["layers_y"]) == layers
    m = z["cka"]
    assert m.dtype == np.float64 and m.shape == (10, 10)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert int(z["n_samples"]) == 80 and int(z["n_batches"]) == 3  # 32 + 32 + 16
    assert z["cka_stderr"].shape == (10, 10)

    assert (out / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "cka.pdf").read_bytes()[:5] == b"%PDF-"
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok"
    assert res["model"] == "r18" and res["init"] == "random" and res["dataset"] == "synthetic"
    assert res["n_samples"] == 80 and res["layers_x"] == layers
    assert 0 <= res["test_accuracy"] <= 1
    assert res["seconds"]["total"] > 0 and res["seconds"]["cka"] > 0
    assert res["config"]["cka"]["kernel"] == "linear"
    assert not list(out.glob(".*.tmp")) and not [p for p in out.iterdir() if p.name.startswith(".cka")]


@pytest.mark.slow
def test_cli_options_and_reproducibility(tmp_path):
    args = [
        *SMALL,
        "cka.kernel=rbf",
        "cka.estimator=biased",
        "similarity.layers=[stem,layer2.*.bn1,fc]",
        "seed=3",
    ]
    run_vvm([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    run_vvm([*args, f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    a, b = load_npz(tmp_path / "a" / "cka.npz"), load_npz(tmp_path / "b" / "cka.npz")
    assert list(a["layers_x"]) == ["stem", "layer2.0.bn1", "layer2.1.bn1", "fc"]
    assert a["kernel"] == "rbf" and a["estimator"] == "biased"
    np.testing.assert_array_equal(a["cka"], b["cka"])  # same seed, same weights, same CKA


@pytest.mark.slow
def test_cli_bad_layer_fails_with_helpful_error(tmp_path):
    proc = run_vvm(
        [*SMALL, "similarity.layers=[layer9]", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    assert "layer 'layer9' matches no module" in proc.stderr
    res = json.loads((tmp_path / "r" / "result.json").read_text())
    assert res["status"] == "failed" and "layer9" in res["error"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("vvm") is None, reason="console script not installed")
def test_console_script_help(tmp_path):
    proc = subprocess.run(["vvm", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Configuration groups" in proc.stdout and "r18" in proc.stdout
