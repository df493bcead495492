"""Signals to a real `python -m vvm` process: a SIGKILL during training followed by a rerun gives the weights of
an uninterrupted run (and leaves no temporary behind); SIGTERM records the job as interrupted with the command
that resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING as TRAIN
from helpers import run_vvm


def _start(tmp_path: Path, ckpt: Path, run: str) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, "-m", "vvm", *TRAIN, f"paths.checkpoints={ckpt}", f"hydra.run.dir={tmp_path / run}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for_resume_point(proc: subprocess.Popen, ckpt: Path, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not list(ckpt.glob("*.last.ckpt")):
        assert proc.poll() is None, "the training ended before its first resume point was seen"
        assert time.monotonic() - t0 < timeout, "no resume point appeared"
        time.sleep(0.02)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    (path,) = [p for p in ckpt.glob("*.ckpt") if not p.name.endswith(".last.ckpt")]
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_equals_uninterrupted(tmp_path):
    run_vvm([*TRAIN, f"paths.checkpoints={tmp_path / 'a'}", f"hydra.run.dir={tmp_path / 'ra'}"], cwd=tmp_path)
    straight = _weights(tmp_path / "a")

    proc = _start(tmp_path, tmp_path / "b", "rb")
    _wait_for_resume_point(proc, tmp_path / "b")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not [p for p in (tmp_path / "b").glob("*.ckpt") if not p.name.endswith(".last.ckpt")]

    run_vvm(
        [*TRAIN, f"paths.checkpoints={tmp_path / 'b'}", f"hydra.run.dir={tmp_path / 'rb2'}"], cwd=tmp_path
    )
    resumed = _weights(tmp_path / "b")
    assert set(resumed) == set(straight)
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6, msg=k)
    res = json.loads((tmp_path / "rb2" / "result.json").read_text())
    assert res["status"] == "ok" and res["resumed_from"]
    assert not list((tmp_path / "b").glob("*.tmp*")) and not list((tmp_path / "b").glob(".*tmp*"))


def test_sigterm_records_interrupted_with_the_resume_command(tmp_path):
    proc = _start(tmp_path, tmp_path / "c", "rc")
    _wait_for_resume_point(proc, tmp_path / "c")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    res = json.loads((tmp_path / "rc" / "result.json").read_text())
    assert res["status"] == "interrupted", res.get("error")
    assert res["resume"].startswith("python -m vvm") and "model=r18" in res["resume"]
