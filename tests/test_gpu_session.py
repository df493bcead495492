"""bench/gpu_session.sh, the script a session lent a GPU runs in two calls (issues 20, 27), run here in its dry
mode: every step tiny, on the CPU, so that it cannot rot between GPU sessions (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    1: ["versions", "cka_256", "cka_vit_64", "train"],
    2: ["pytest_gpu", "lambda_fit", "compare", "cka_1024", "cka_256_c22"],
}
FILES = {
    1: {"bench_cka_256.json", "bench_cka_vit_64.json", "bench_train.json"},
    2: {"bench_cka_1024.json", "bench_cka_256_c22.json", "pytest_gpu.xml"},
}


def run_part(part: int, tmp_path: Path) -> tuple[Path, set[str]]:
    """One call of the session, dry; what comes back: one archive and one summary, every step ok."""
    out, work = tmp_path / f"out{part}", tmp_path / f"work{part}"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "WORK": str(work), "DEADLINE": "3000"}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh"), str(part)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    summary = (out / f"summary_part{part}.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"gpu_session_part{part}.tgz", f"summary_part{part}.txt"]
    lines = [line for line in summary.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == STEPS[part] and all("rc=0" in line for line in lines), (
        summary
    )
    with tarfile.open(out / f"gpu_session_part{part}.tgz") as tar:
        names = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
    assert {f"{s}.log" for s in STEPS[part]} | FILES[part] <= names, names
    return work, names


@pytest.mark.slow
def test_gpu_session_dry_run(tmp_path):
    """Both parts, dry (31 minutes on the shared 2-core CPU at a load of 15-20, 2026-12-08)."""
    work, _ = run_part(1, tmp_path)
    versions = (work / "versions.log").read_text()
    assert "timm 1.0" in versions and "vit_l32     blocks  27  all 219" in versions, versions
    vit = json.loads((work / "bench_cka_vit_64.json").read_text())["rows"][0]
    # the dry run's `blocks` nest no layer in another (tests/test_bench_cka.py checks a parent before its children);
    # at batch 4 float32 rounding is amplified to about 2e-4
    assert vit["exact_max_err"] < 1e-3
    work, names = run_part(2, tmp_path)
    for name in ("lambda_fit", "compare"):
        assert json.loads((work / name / "result.json").read_text())["status"] == "ok"
        assert f"{name}/result.json" in names
    fit = json.loads((work / "lambda_fit" / "result.json").read_text())
    assert fit["trained"] is True and fit["model"] == "lambda_r26"
    compare = json.loads((work / "compare" / "result.json").read_text())
    assert compare["compare"]["model"] == "vit_l32"
    assert not any(p.suffix == ".ckpt" for p in work.rglob("*")), "checkpoints stay out of the archive"


def test_gpu_session_needs_a_part():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: bash bench/gpu_session.sh 1|2" in proc.stderr
