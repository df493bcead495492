"""bench/gpu_session.sh, the script a session lent a GPU runs (issue 20), run here in its dry mode: every step
tiny, on the CPU, so that it cannot rot between GPU sessions (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "versions",
    "pytest_gpu",
    "lambda_fit",
    "compare",
    "cka_256",
    "cka_vit_64",
    "cka_1024",
    "train",
    "cka_256_c22",
]


@pytest.mark.slow
def test_gpu_session_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "WORK": str(work), "DEADLINE": "3000"}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:] + proc.stderr[-3000:]
    # what comes back from the device: one archive and one summary, one line per step, every step ok
    assert sorted(p.name for p in out.iterdir()) == ["gpu_session.tgz", "summary.txt"]
    lines = [line for line in summary.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == STEPS and all("rc=0" in line for line in lines), summary
    with tarfile.open(out / "gpu_session.tgz") as tar:
        names = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
        for name in ("lambda_fit", "compare"):
            result = json.load(tar.extractfile(f"./{name}/result.json"))
            assert result["status"] == "ok", result
        assert {f"{s}.log" for s in STEPS} <= names
        assert {
            "bench_cka_256.json",
            "bench_cka_vit_64.json",
            "bench_cka_1024.json",
            "bench_train.json",
        } <= names
        assert "pytest_gpu.xml" in names
    fit = json.loads((work / "lambda_fit" / "result.json").read_text())
    assert fit["trained"] is True and fit["model"] == "lambda_r26"
    compare = json.loads((work / "compare" / "result.json").read_text())
    assert compare["compare"]["model"] == "vit_l32"
    assert not any(p.suffix == ".ckpt" for p in work.rglob("*")), "checkpoints stay out of the archive"
