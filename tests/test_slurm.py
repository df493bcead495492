"""The cluster path against a real Slurm (no mock): `make test-cluster` after `scripts/slurm-local.sh up` (a
one-node cluster of this machine; .ci/run does both). Without a cluster these tests skip, naming the way to start
one; under CI (CI=true) a missing cluster fails them instead.

Each test submits through `python -m vvm -m hydra/launcher=slurm` (the launcher's defaults, partition from
VVM_SLURM_PARTITION) and reads what the jobs wrote. The jobs are as small as the path they test allows (digits or
8x8 synthetic images, a few dozen examples, two layers).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAINING as TRAIN
from helpers import run_vvm

pytestmark = pytest.mark.slurm

PARTITION = os.environ.get("VVM_SLURM_PARTITION", "debug")
SLURM = ["-m", "hydra/launcher=slurm"]
# a small CKA job on digits: 64 test digits in 2 batches, two layers
DIGITS = [
    "model=r18",
    "init=random",
    "dataset=digits",
    "dataset.limit=64",
    "similarity.batch_size=32",
    "similarity.layers=[layer1,layer4]",
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def _cluster_state() -> str | None:
    """Why there is no usable cluster here, or None when the partition has an idle (or mixed) node."""
    if shutil.which("sinfo") is None:
        return "Slurm's sinfo is not installed"
    out = subprocess.run(
        ["sinfo", "--noheader", "--partition", PARTITION, "--format", "%T"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    states = out.stdout.split()
    if not any(s in ("idle", "mixed", "allocated") for s in states):
        return f"partition {PARTITION!r} has no node up ({' '.join(states) or 'none'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    why = _cluster_state()
    if why is None:
        return
    message = f"no Slurm cluster: {why} (start one with scripts/slurm-local.sh up)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message}; under CI the slurm tests must run")
    pytest.skip(message)


def _env() -> dict[str, str]:
    return {**os.environ, "VVM_SLURM_PARTITION": PARTITION, "HYDRA_FULL_ERROR": "1", "WANDB_SILENT": "true"}


def _sweep(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_vvm([*SLURM, *args], cwd=cwd, env=_env(), timeout=timeout)


def _start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vvm", *SLURM, *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the sweep did not finish in {timeout} s:\n{out[-4000:]}") from None
    assert proc.returncode == 0, f"the sweep failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def _rows(sweep_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def _job_of(sweep_dir: Path, task: int) -> str:
    """The Slurm id of the sweep's job number ``task`` (``<array>_<task>``; a sweep of one job is a plain job),
    from submitit's folders."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
    ids = [n for n in names if n.endswith(f"_{task}")] or [n for n in names if n.isdigit()]
    assert len(ids) == 1, names
    return ids[0]


def _scontrol(job_id: str) -> dict[str, str]:
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(kv.split("=", 1) for kv in shown.split() if "=" in kv)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    (path,) = [p for p in ckpt.glob("*.ckpt") if not p.name.endswith(".last.ckpt")]
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _wait_for(predicate, what: str, timeout: float = 600, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}:\n{proc.communicate()[0][-4000:]}")
        assert time.monotonic() - t0 < timeout, f"{what}: not after {timeout} s"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- the tests
def test_readme_sweep_with_the_launcher_defaults(tmp_path):
    """The README's command, with the launcher's defaults, on the CPU partition: 4 jobs, a summary of 4."""
    sweep_dir = tmp_path / "sweep"
    _sweep([*DIGITS, "seed=0,1,2,3", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert [r["status"] for r in _rows(sweep_dir)] == ["ok"] * 4
    (script,) = (sweep_dir / ".submitit").glob("*/*_submission.sh")
    text = script.read_text()
    assert f"--partition={PARTITION}" in text and "--ntasks-per-node=1" in text
    assert "gpus" not in text and "gres" not in text  # a CPU trainer on a CPU partition asks for no GPU
    assert "--cpus-per-task=" in text and "--mem=" in text
    for job in range(4):
        assert json.loads((sweep_dir / str(job) / "result.json").read_text())["status"] == "ok"


def test_a_request_no_node_can_meet_is_refused_before_submission(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_vvm(
        [*SLURM, *DIGITS, "hydra.launcher.cpus_per_task=4096", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        env=_env(),
        check=False,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "hydra.launcher.cpus_per_task=4096" in out, out[-3000:]
    assert f"largest node of partition '{PARTITION}'" in out
    assert not (sweep_dir / ".submitit").exists()  # nothing was submitted


def test_sigterm_mid_training_requeues_and_resumes_to_the_same_weights(tmp_path):
    """Two identical trainings as one sweep (only their checkpoint folders differ); job 1 gets SIGTERM from the
    scheduler after its first resume point, is requeued, resumes, and ends with job 0's weights."""
    sweep_dir = tmp_path / "sweep"
    a, b = tmp_path / "a", tmp_path / "b"
    proc = _start_sweep(
        [
            *TRAIN,
            f"paths.checkpoints={a},{b}",
            "hydra.launcher.cpus_per_task=1",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
    )
    _wait_for(lambda: any(b.glob("*.last.ckpt")), "job 1's first resume point", proc=proc)
    job = _job_of(sweep_dir, 1)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    _finish(proc)
    assert int(_scontrol(job)["Restarts"]) == 1
    rows = _rows(sweep_dir)
    assert [r["status"] for r in rows] == ["ok", "ok"]  # the requeued job counts once
    res = json.loads((sweep_dir / "1" / "result.json").read_text())
    assert res["status"] == "ok" and res["resumed_from"], res.get("error")
    straight, resumed = _weights(a), _weights(b)
    assert set(resumed) == set(straight)
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6, msg=k)
    log = (sweep_dir / "1" / "vvm.log").read_text()
    assert "requeued Slurm job" in log and "resuming the interrupted training" in log


def test_a_job_past_its_time_limit_is_requeued_and_finishes(tmp_path):
    """A 3-minute time limit that the training outlasts: Slurm's warning (USR2, signal_delay_s before the limit,
    give or take its 30 s clock) has submitit requeue the job, which resumes from its last saved epoch and
    finishes. The training is sized on this machine (runs of 2 and 6 epochs first: their difference is an epoch
    without the fixed costs) to last about 200 s, so that the first time slot (the signal comes 90-120 s in)
    cannot hold it, and the second can.
    (A 1-minute limit would be signalled before Python starts.)"""
    short = [a for a in TRAIN if not a.startswith("train.epochs")]
    seconds = {}
    for n in (2, 6):  # the time of an epoch without the training's fixed costs (its first epoch, precise BN)
        calib = tmp_path / f"calibrate{n}"
        run_vvm(
            [*short, f"train.epochs={n}", f"paths.checkpoints={calib}", f"hydra.run.dir={calib}"],
            cwd=tmp_path,
        )
        seconds[n] = json.loads((calib / "result.json").read_text())["train_seconds"]
    epoch_s = max(1e-3, (seconds[6] - seconds[2]) / 4)
    epochs = min(1000, max(8, math.ceil(200 / epoch_s)))
    sweep_dir = tmp_path / "sweep"
    proc = _start_sweep(
        [
            *short,
            f"train.epochs={epochs}",
            f"paths.checkpoints={tmp_path / 'ckpt'}",
            "hydra.launcher.timeout_min=3",
            "hydra.launcher.signal_delay_s=60",
            "hydra.launcher.max_num_timeout=6",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
    )
    _finish(proc, timeout=1800)
    job = _job_of(sweep_dir, 0)
    assert int(_scontrol(job)["Restarts"]) >= 1
    res = json.loads((sweep_dir / "0" / "result.json").read_text())
    assert res["status"] == "ok" and res["resumed_from"] and res["train_epochs"] == epochs
    log = "".join(p.read_text() for p in (sweep_dir / ".submitit" / job).glob(f"{job}_0_log.*"))
    # submitit's word that the time limit came, then the requeued run resuming (submitit may exit before it logs
    # its own "Exiting gracefully": Slurm's SIGTERM follows its USR2 and stops the job as Ctrl-C does)
    assert "this job is timed-out" in log and "resuming the interrupted training" in log


def test_ddp_over_two_slurm_tasks_equals_one_process(tmp_path):
    """trainer=ddp on the CPU with 2 devices: one Slurm job of two tasks (gloo, ranks from Slurm); it trains,
    and its CKA pass equals one process's on the weights it saved (<= 1e-12)."""
    sweep_dir = tmp_path / "sweep"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "hydra.launcher.cpus_per_task=1"]
    job = [a for a in TRAIN if a != "trainer=cpu"] + [f"paths.checkpoints={tmp_path / 'ckpt'}"]
    _sweep([*job, *ddp, "train.epochs=1", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    (script,) = (sweep_dir / ".submitit").glob("*/*_submission.sh")
    assert "--ntasks-per-node=2" in script.read_text()
    res = json.loads((sweep_dir / "0" / "result.json").read_text())
    assert res["status"] == "ok" and res["checkpoint"], res.get("error")
    # two tasks ran, ranked by Slurm (submitit's JobEnvironment of task 1), and the fit saw both ranks
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))
    assert "global_rank=1(2)" in logs and "per rank x 2" in logs

    one = tmp_path / "one"
    single = [a for a in TRAIN if not a.startswith("init=")]
    run_vvm(
        [*single, "init=pretrained", f"init.checkpoint={res['checkpoint']}", f"hydra.run.dir={one}"],
        cwd=tmp_path,
    )
    got, ref = np.load(sweep_dir / "0" / "cka.npz"), np.load(one / "cka.npz")
    assert int(got["n_samples"]) == int(ref["n_samples"]) == 16
    np.testing.assert_allclose(got["cka"], ref["cka"], rtol=0, atol=1e-12)


def test_the_joint_pass_as_a_slurm_job(tmp_path):
    """A sweep on the cluster prints the sbatch line of its joint pass; that line, run as printed (plus --wait),
    is a batch job of its own that writes the joint files."""
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(
        [*DIGITS, "model=r18,r34", "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )
    (line,) = [
        ln.split("the joint pass of this sweep as a Slurm job: ", 1)[1]
        for ln in (proc.stdout + proc.stderr).splitlines()
        if "the joint pass of this sweep as a Slurm job: " in ln
    ]
    args = shlex.split(line)
    assert args[0] == "sbatch" and f"--partition={PARTITION}" in args and "--cpus-per-task=1" in args
    done = subprocess.run(
        [args[0], "--wait", *args[1:]], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
    )
    (out,) = sweep_dir.glob("joint-*.out")
    assert done.returncode == 0, out.read_text()[-4000:]
    joint = np.load(sweep_dir / "joint" / "joint.npz")
    assert list(joint["models"]) == ["r18-random", "r34-random"]
    assert joint["cka"].shape == (4, 4)  # two layers of each model
    np.testing.assert_allclose(np.diag(joint["cka"]), 1.0, atol=1e-6)
