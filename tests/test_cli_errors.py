"""The command lines at their edges (issue 19, items 10 and 13): ``python -m vvm.joint`` checks its output, its
jobs and its batch plan before any work and locks its ``--out``; ``vvm.joint``, ``vvm.diff`` and ``vvm.sweep``
answer an input they cannot use (a damaged cka.npz, the wrong kind of directory, a list where a mapping goes)
with one line on stderr and exit status 2; and their ``--help`` does not wait for torch."""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vvm.io import write_json, write_npz

DIGITS = ["dataset=digits", "dataset.limit=48", "similarity.batch_size=16", "logger=none", "trainer=cpu"]


def stored_job(sweep_dir: Path, job: str, seed: int) -> Path:
    """A finished r18 (init=random) job of a digits sweep, as the joint pass reads it: result.json with the
    stored config, and a cka.npz."""
    from compose import compose_settings

    from vvm.settings import plain

    d = sweep_dir / job
    d.mkdir(parents=True)
    settings = compose_settings([*DIGITS, "model=r18", "init=random", f"seed={seed}"], d)
    result = {"status": "ok", "model": "r18", "init": "random", "dataset": "digits", "family": "resnet"}
    write_json(d / "result.json", {**result, "tag": "r18-random-digits", "config": plain(settings)})
    write_npz(d / "cka.npz", cka=np.eye(2), cka_stderr=np.zeros((2, 2)), layers_x=np.array(["a", "b"]),
              layers_y=np.array(["a", "b"]), n_samples=np.array(48))  # fmt: skip
    return d


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("cli") / "multirun" / "2026-01-02" / "03-04-05"
    for job in range(2):
        stored_job(sweep_dir, str(job), seed=job)
    return sweep_dir


@pytest.fixture
def no_work(monkeypatch):
    """Rebuilding a model is the joint pass's first work: a check that comes after it comes too late."""

    def fail(job):
        raise AssertionError(f"job {job.job}'s model was rebuilt before the inputs were checked")

    monkeypatch.setattr("vvm.joint.joint_pass.rebuild_model", fail)


def one_line_error(capsys, call, *args) -> str:
    """``call(*args)`` exits with status 2 and one line on stderr (no traceback); that line."""
    with pytest.raises(SystemExit) as e:
        call(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def joint(capsys, *argv: str) -> str:
    from vvm.joint.joint_pass import main

    return one_line_error(capsys, main, [*argv, "--logger", "none", "--no-progress"])


# ---------------------------------------------------------------------------------------------- item 10
def test_joint_checks_out_before_any_work(sweep, tmp_path, capsys, no_work):
    err = joint(capsys, str(sweep), "--out", "/proc/x")
    assert "--out='/proc/x' is not writable" in err and "a folder you can write to" in err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    err = joint(capsys, str(sweep), "--out", str(a_file))
    assert f"--out={str(a_file)!r} is a file" in err


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--batch-size", "3"], "--batch-size=3"), (["--max-samples", "2"], "--max-samples=2")],
)
def test_joint_checks_the_batch_plan_before_any_work(sweep, tmp_path, capsys, no_work, flags, named):
    err = joint(capsys, str(sweep), "--out", str(tmp_path / "j"), *flags)
    assert named in err and "cka." not in err and "at least 4 examples per batch" in err


def test_joint_refuses_an_unknown_job(sweep, tmp_path, capsys, no_work):
    err = joint(capsys, str(sweep), "--out", str(tmp_path / "j"), "--jobs", "1,99")
    assert "--jobs" in err and "no job 99" in err and "its jobs are 0, 1" in err


def test_joint_checks_layers_on_the_first_model(sweep, tmp_path, capsys, monkeypatch):
    """A --layers name the models lack: one line naming --layers and the close names, after one model was
    built (not after every model was loaded and the pass set up)."""
    import vvm.joint.joint_pass

    built = []
    real = vvm.joint.joint_pass.rebuild_model

    def counting(job):
        built.append(job.job)
        return real(job)

    monkeypatch.setattr("vvm.joint.joint_pass.rebuild_model", counting)
    err = joint(capsys, str(sweep), "--out", str(tmp_path / "j"), "--layers", "layer1,layer9")
    assert "vvm.joint: error: --layers=layer1,layer9: job 0's model" in err, err
    assert "'layer9' matches no module" in err and "closest names: layer4" in err and built == ["0"], built


def test_joint_locks_its_out(sweep, tmp_path, capsys, no_work):
    out = tmp_path / "j"
    out.mkdir()
    fd = os.open(out / ".joint.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another joint pass writing there
        os.write(fd, b"4242\n")
        err = joint(capsys, str(sweep), "--out", str(out))
        assert "another joint pass is writing there" in err and "pid 4242" in err and "--out" in err
    finally:
        os.close(fd)
    joint(capsys, str(sweep), "--out", str(out), "--jobs", "99")  # fails inside the lock...
    fd = os.open(out / ".joint.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ...which it released
    finally:
        os.close(fd)


def test_joint_csv_says_nan_for_an_undefined_block(tmp_path):
    """Two models of one architecture whose block is all NaN: no layer identification (NaN), not 0."""
    import pandas as pd
    import torch

    from vvm.cka.joint import JointResult
    from vvm.joint.files import pair_rows
    from vvm.sweep.records import JointJob

    layers = ["a/l0", "a/l1", "b/l0", "b/l1"]
    nan = torch.full((4, 4), math.nan, dtype=torch.float64)
    res = JointResult(matrix=nan, stderr=nan, layers_x=layers, layers_y=layers, n_samples=0, n_batches=0,
                      hsic_xx=torch.full((4,), math.nan), hsic_yy=torch.full((4,), math.nan), kernel="linear",
                      estimator="unbiased", models=["a", "b"], model_index=torch.tensor([0, 0, 1, 1]))  # fmt: skip
    jobs = [JointJob(str(i), t, "r18", "random", "resnet", None, {}) for i, t in enumerate("ab")]
    path = tmp_path / "joint.csv"
    path.write_text(pd.DataFrame(pair_rows(res, jobs)).to_csv(index=False))
    row = pd.read_csv(path).iloc[0]
    assert math.isnan(row["layer_identification"]) and row["identification_layers"] == 0
    assert math.isnan(row["mean_row_max"]) and math.isnan(row["mean_cka"])


# ---------------------------------------------------------------------------------------------- item 13
def test_joint_wrong_directories(sweep, tmp_path, capsys, no_work):
    err = joint(capsys, str(sweep / "0"), "--out", str(tmp_path / "j"))
    assert "is one job's directory, not a sweep's" in err and str(sweep) in err
    (tmp_path / "empty").mkdir()
    err = joint(capsys, str(tmp_path / "empty"), "--out", str(tmp_path / "j"))
    assert "holds no jobs" in err and "multirun/<date>/<time>" in err


def damaged_sweep(root: Path) -> Path:
    """A sweep of three ok jobs: a truncated cka.npz, a result.json that holds a list, and a good one."""
    from test_sweep import fake_job

    sweep_dir = root / "multirun" / "2026-01-02" / "03-04-05"
    for job in "012":
        fake_job(sweep_dir, job, "r18", "random")
    npz = sweep_dir / "0" / "cka.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    (sweep_dir / "1" / "result.json").write_text(json.dumps([1, 2]))
    (sweep_dir / "2" / ".hydra" / "hydra.yaml").write_text("- a list\n- where a mapping goes\n")
    return sweep_dir


def test_damaged_jobs_are_notes_not_tracebacks(tmp_path):
    from vvm.joint.joint_pass import read_jobs
    from vvm.sweep.records import collect_jobs

    sweep_dir = damaged_sweep(tmp_path)
    jobs = {j.job: j for j in collect_jobs(sweep_dir)}
    assert jobs["0"].status == "incomplete" and "cka.npz is missing or unreadable" in jobs["0"].error
    assert jobs["1"].status == "incomplete" and "result.json holds a JSON list" in jobs["1"].error
    assert jobs["2"].status == "ok"
    _, notes = read_jobs(sweep_dir)
    assert any("job 0" in n and "cka.npz" in n for n in notes)
    assert any("job 1" in n and "JSON list" in n for n in notes)


def test_sweep_cli_errors(tmp_path, capsys):
    from vvm.sweep.summary import main

    sweep_dir = damaged_sweep(tmp_path)
    err = one_line_error(capsys, main, ["summary", str(sweep_dir / "2"), "--no-wandb"])
    assert "one job's directory, not a sweep's" in err
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, main, ["summary", str(tmp_path / "empty"), "--no-wandb"])
    assert "holds no jobs" in err
    err = one_line_error(capsys, main, ["resume", str(sweep_dir / "2")])
    assert "multirun.yaml not found" in err and "not a Hydra sweep directory" in err
    (sweep_dir / "multirun.yaml").write_text("- a list\n")
    err = one_line_error(capsys, main, ["resume", str(sweep_dir)])
    assert "multirun.yaml is not the multirun.yaml Hydra writes" in err and "resume=true" in err


def test_diff_cli_errors(tmp_path, capsys):
    from test_sweep import fake_job

    from vvm.diff import main

    sweep_dir = tmp_path / "sweep"
    good, bad = (fake_job(sweep_dir, j, "r18", "random") for j in "01")
    cka = {"cka_stderr": np.zeros((4, 4))}
    write_npz(good / "cka.npz", **dict(np.load(good / "cka.npz")), **cka)
    truncated = (good / "cka.npz").read_bytes()[:200]
    (bad / "cka.npz").write_bytes(truncated)
    out = ["--out", str(tmp_path / "d")]
    err = one_line_error(capsys, main, [str(good), str(bad), *out])
    assert f"{bad / 'cka.npz'} is not a readable cka.npz" in err and "run the job again" in err
    err = one_line_error(capsys, main, [str(sweep_dir), str(good), *out])
    assert f"{sweep_dir} holds no cka.npz" in err and "run directory" in err
    write_npz(tmp_path / "joint.npz", cka=np.eye(2), layers=np.array(["a", "b"]))
    err = one_line_error(capsys, main, [str(good), str(tmp_path / "joint.npz"), *out])
    assert "is not a job's CKA map (no cka_stderr, layers_x, layers_y)" in err
    (tmp_path / "a-file").write_text("")
    err = one_line_error(capsys, main, [str(good), str(good), "--out", str(tmp_path / "a-file")])
    assert "--out" in err and "is a file" in err
    err = one_line_error(capsys, main, [str(good), str(good), "--out", "/proc/x"])
    assert "--out='/proc/x' is not writable" in err


def test_help_does_not_wait_for_torch():
    """``--help`` of every CLI answers before the heavy imports (torch took ~11 s of it here)."""
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from vvm import diff, joint, sweep\n"
        "for m in (joint, diff, sweep):\n"
        "    try:\n"
        "        m.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'torchmetrics', 'torchvision', 'pytorch_lightning', 'lightning', 'matplotlib', 'pandas')\n"
        "print([m for m in heavy if m in sys.modules], time.perf_counter() - t, file=sys.stderr)\n"
    )
    import vvm

    env = {**os.environ, "PYTHONPATH": str(Path(vvm.__file__).parents[1])}  # the vvm these tests run
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded, seconds = done.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    assert loaded == "[]", f"--help imported {loaded} ({float(seconds):.1f} s)"
