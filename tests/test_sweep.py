"""Sweeps: a 2-job multirun end to end (summary.png/pdf/csv), a failing job that does not stop the sweep,
resume, the summary read back from files, and the term_project / SLURM launcher configs composed."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import run_vvm
from omegaconf import OmegaConf

from vvm.io import InputError, write_json, write_npz
from vvm.job.task import completed_result
from vvm.sweep.figures import grid_rows
from vvm.sweep.records import canonical_family, collect_jobs, model_family
from vvm.sweep.summary import SweepSummary, resume_command, write_summary

FAST = [
    "dataset=synthetic",
    "dataset.train_size=64",
    "dataset.test_size=64",
    "dataset.image_size=16",
    "similarity.max_samples=64",
    "similarity.batch_size=32",
    "logger=none",
    "trainer=cpu",
]
TERM_PROJECT_MODELS = ["r18", "r34", "r50", "lambda_r26", "lambda_r38", "lambda_r50", "vit_l32"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_figures(sweep_dir: Path) -> None:
    import matplotlib.pyplot as plt

    png = sweep_dir / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.imread(png).shape[0] > 200
    assert (sweep_dir / "summary.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p for p in sweep_dir.iterdir() if p.name.startswith(".summary")]  # no temporary files left


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def sweep2(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("sweep2")
    sweep_dir = cwd / "multirun" / "s"
    proc = run_vvm(["-m", "model=r18,r34", *FAST, f"hydra.sweep.dir={sweep_dir}"], cwd=cwd)
    return sweep_dir, proc


def test_two_job_sweep_writes_summary(sweep2):
    sweep_dir, _ = sweep2
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["job"], r["model"], r["family"], r["init"], r["dataset"], r["status"]) for r in rows] == [
        ("0", "r18", "resnet", "random", "synthetic", "ok"),
        ("1", "r34", "resnet", "random", "synthetic", "ok"),
    ]
    assert [r["layers"] for r in rows] == ["10", "18"]
    for r in rows:
        assert r["samples"] == "64" and r["error"] == ""
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and float(r["seconds"]) > 0
        assert -0.1 < float(r["mean_cka"]) <= 1.0
        res = json.loads((sweep_dir / r["job"] / "result.json").read_text())
        assert res["family"] == "resnet" and math.isclose(res["mean_cka"], float(r["mean_cka"]))
    assert_figures(sweep_dir)


@pytest.mark.slow
def test_resume_skips_complete_jobs(sweep2):
    sweep_dir, _ = sweep2
    cwd = sweep_dir.parent.parent
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/result.json")} | {
        p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/cka.npz")
    }
    summary_before = (sweep_dir / "summary.csv").stat().st_mtime_ns
    proc = run_vvm(["-m", "model=r18,r34", *FAST, "resume=true", f"hydra.sweep.dir={sweep_dir}"], cwd=cwd)
    assert (
        proc.stdout.count("already has a complete result, skipping")
        + proc.stderr.count("already has a complete result, skipping")
        == 2
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing recomputed
    assert (sweep_dir / "summary.csv").stat().st_mtime_ns > summary_before  # the summary covers all jobs
    assert [r["status"] for r in read_csv(sweep_dir / "summary.csv")] == ["ok", "ok"]


def test_resume_requires_the_same_config(sweep2):
    sweep_dir, _ = sweep2
    job = sweep_dir / "0"
    config = json.loads((job / "result.json").read_text())["config"]
    assert completed_result(job, config) is not None

    def changed(key: str, value) -> dict:
        other = OmegaConf.create(config)
        OmegaConf.update(other, key, value, force_add=True)
        return OmegaConf.to_container(other)

    for key, value in [
        ("resume", True),
        ("logger", None),
        ("paths.data", "/elsewhere"),
        ("train.new_key", 1),
    ]:
        # these keys do not change the result (nor new keys)
        assert completed_result(job, changed(key, value)) is not None, key
    for key, value in [("similarity.max_samples", 32), ("model.name", "r34"), ("seed", 1)]:
        assert completed_result(job, changed(key, value)) is None, key  # another job's result is not reused


@pytest.mark.slow
def test_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep_dir = tmp_path / "multirun" / "f"
    proc = run_vvm(
        ["-m", "model.name=does_not_exist,r18", *FAST, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path
    )
    assert "job failed, the sweep goes on" in proc.stdout + proc.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["model"], r["status"]) for r in rows] == [("does_not_exist", "failed"), ("r18", "ok")]
    assert (
        "model.name='does_not_exist': model=r18 builds r18" in rows[0]["error"]
        and "\n" not in rows[0]["error"]
    )
    assert rows[0]["layers"] == "" and rows[0]["family"] == "other"
    failed = json.loads((sweep_dir / "0" / "result.json").read_text())
    assert failed["status"] == "failed" and "Traceback" in failed["traceback"]
    assert_figures(sweep_dir)


# ------------------------------------------------------------------------------------------ summary from files
def fake_job(
    sweep_dir: Path,
    job: str,
    model: str,
    init: str,
    *,
    status: str = "ok",
    n: int = 4,
    nan_layer: int | None = None,
    overrides: list[str] | None = None,
    logger: dict | None = None,
) -> Path:
    d = sweep_dir / job
    (d / ".hydra").mkdir(parents=True)
    ov = overrides if overrides is not None else [f"model={model}", f"init={init}"]
    (d / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(ov)))
    if status == "incomplete":  # killed before writing anything: only Hydra's record
        hydra_yaml = {"hydra": {"runtime": {"choices": {"model": model, "init": init, "dataset": "digits"}}}}
        (d / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(hydra_yaml)))
        return d
    layers = [f"{model}.l{i}" for i in range(n)]
    res = {"model": model, "init": init, "dataset": "digits", "kernel": "linear", "status": status}
    res["config"] = {"logger": logger}
    res["seconds"] = {"total": 1.5}
    if status == "ok":
        m = np.full((n, n), 0.5) + 0.5 * np.eye(n)
        if nan_layer is not None:
            m[nan_layer, :] = m[:, nan_layer] = np.nan
        write_npz(
            d / "cka.npz",
            cka=m,
            layers_x=np.array(layers),
            layers_y=np.array(layers),
            n_samples=np.array(128),
        )
        res.update(n_samples=128, test_accuracy=0.25, mean_cka=0.5)
    else:
        res.update(
            error="RuntimeError: weights for vit_l32 are not available offline\n(more)", traceback="Traceback"
        )
    write_json(d / "result.json", res)
    return d


@pytest.fixture
def fake_term_project(tmp_path) -> Path:
    sweep_dir = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    jobs = [(m, i) for m in TERM_PROJECT_MODELS for i in ("pretrained", "random")]
    for k, (m, i) in enumerate(jobs):
        status = (
            "failed"
            if (m, i) == ("vit_l32", "pretrained")
            else "incomplete"
            if (m, i) == ("r50", "random")
            else "ok"
        )
        fake_job(
            sweep_dir, str(k), m, i, status=status, n=3 + k % 4, nan_layer=1 if m == "lambda_r26" else None
        )
    return sweep_dir


def test_summary_from_files(fake_term_project):
    out = write_summary(fake_term_project)
    assert {"csv", "png", "pdf"} <= set(out["files"])
    rows = read_csv(fake_term_project / "summary.csv")
    assert [r["job"] for r in rows] == [str(k) for k in range(14)]  # numeric order: 2 before 10
    assert [r["model"] for r in rows[::2]] == TERM_PROJECT_MODELS
    by = {(r["model"], r["init"]): r for r in rows}
    assert by[("vit_l32", "pretrained")]["status"] == "failed"
    assert (
        by[("vit_l32", "pretrained")]["error"]
        == "RuntimeError: weights for vit_l32 are not available offline (more)"
    )
    assert (
        by[("r50", "random")]["status"] == "incomplete" and "no result.json" in by[("r50", "random")]["error"]
    )
    assert by[("r18", "pretrained")]["status"] == "ok" and by[("r18", "pretrained")]["layers"] == "3"
    assert {r["family"] for r in rows} == {"resnet", "lambda", "vit"}
    assert sorted(j.job for j in out["failed"]) == ["12", "5"]
    assert_figures(fake_term_project)


def test_grid_rows_one_family_per_row(fake_term_project):
    rows = grid_rows(collect_jobs(fake_term_project))
    assert [label for label, _ in rows] == ["resnet", "lambda", "vit"]
    assert [p.title for p in rows[0][1]] == [
        f"{m} · {i}" for m in ("r18", "r34", "r50") for i in ("pretrained", "random")
    ]
    vit = rows[2][1]
    assert vit[0].note.startswith("failed: RuntimeError") and vit[0].matrix is None
    assert vit[1].note is None and vit[1].matrix.shape == (4, 4)
    lam = rows[1][1][0]
    assert np.isnan(lam.matrix[1]).all()  # undefined layer kept as NaN (drawn grey)


def test_variant_rows_when_the_sweep_varies_more(tmp_path):
    sweep_dir = tmp_path / "s"
    for k, ds in enumerate(["digits", "cifar10"]):
        fake_job(
            sweep_dir,
            str(k),
            "r18",
            "random",
            overrides=["model=r18", f"dataset={ds}", "similarity.batch_size=32"],
        )
    jobs = collect_jobs(sweep_dir)
    assert [j.variant for j in jobs] == ["dataset=digits", "dataset=cifar10"]
    assert [label for label, _ in grid_rows(jobs)] == ["resnet\ndataset=cifar10", "resnet\ndataset=digits"]


@pytest.mark.parametrize(
    "name, family",
    [
        ("r18", "resnet"),
        ("r50", "resnet"),
        ("resnet101", "resnet"),
        ("lambda_r26", "lambda"),
        ("vit_l32", "vit"),
    ]
    + [("deit_small", "vit"), ("timm", "other"), (None, "other")],
)
def test_model_family(name, family):
    assert model_family(name) == family


def test_canonical_family():
    assert canonical_family("lambda_resnet", "lambda_r26") == "lambda"  # the models' own label, folded
    assert canonical_family("resnet", "r18") == "resnet" and canonical_family("vit", "vit_l32") == "vit"
    assert canonical_family("timm", "timm") == "timm" and canonical_family(None, "lambda_r50") == "lambda"


def test_callback_fail_on_error(tmp_path):
    sweep_dir = tmp_path / "s"
    fake_job(sweep_dir, "0", "vit_l32", "pretrained", status="failed")
    fake_job(sweep_dir, "1", "vit_l32", "random")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    SweepSummary().on_multirun_end(cfg)  # failures are listed, the sweep exits 0
    assert (sweep_dir / "summary.csv").is_file()
    with pytest.raises(SystemExit):
        SweepSummary(fail_on_error=True).on_multirun_end(cfg)
    SweepSummary(enabled=False).on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": "/nonexistent"}}})
    )


def fake_wandb(monkeypatch, fail: bool = False) -> list[dict]:
    calls: list[dict] = []

    class Run:
        dir = "/tmp/wandb/offline-run/files"
        summary: dict = {}

        def log(self, payload):
            calls.append({"log": sorted(payload)})

        def finish(self):
            calls.append({"finish": True})

    def init(**kw):
        if fail:
            raise RuntimeError("no W&B here")
        calls.append({"init": kw})
        return Run()

    mod = types.SimpleNamespace(
        init=init, Image=lambda p: ("image", p), Table=lambda dataframe: ("table", len(dataframe))
    )
    monkeypatch.setitem(sys.modules, "wandb", mod)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return calls


def test_summary_logged_to_wandb_only_when_jobs_used_it(tmp_path, monkeypatch):
    wandb_logger = {"project": "vvm", "group": "r18-random-digits"}
    sweep_dir = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    fake_job(sweep_dir, "0", "r18", "random", logger={**wandb_logger, "mode": "offline"})
    fake_job(
        sweep_dir,
        "1",
        "r34",
        "random",
        logger={**wandb_logger, "group": "r34-random-digits", "mode": "offline"},
    )
    calls = fake_wandb(monkeypatch)
    out = write_summary(sweep_dir)
    init = calls[0]["init"]
    assert init["project"] == "vvm" and init["mode"] == "offline" and init["job_type"] == "sweep-summary"
    assert init["group"] == "sweep-2026-01-02_03-04-05"  # the jobs' groups differ: the sweep's own group
    assert calls[1] == {"log": ["summary/grid", "summary/jobs"]} and calls[-1] == {"finish": True}
    assert "wandb" in out["files"]

    calls = fake_wandb(monkeypatch, fail=True)  # W&B failing to start never fails the summary
    (sweep_dir / "summary.csv").unlink()
    write_summary(sweep_dir)
    assert (sweep_dir / "summary.csv").is_file()

    calls = fake_wandb(monkeypatch)  # jobs without W&B: nothing logged
    plain = tmp_path / "plain"
    fake_job(plain, "0", "r18", "random", logger=None)
    write_summary(plain)
    assert calls == []


# ------------------------------------------------------------------------------------------ configs
def compose(overrides: list[str]):
    from vvm.schema import compose_config

    return compose_config(overrides)


def test_term_project_expands_to_14_composable_jobs():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose(["+sweep=term_project", "dataset=digits"])
    params = cfg.hydra.sweeper.params
    assert params.model.split(",") == TERM_PROJECT_MODELS and params.init.split(",") == [
        "pretrained",
        "random",
    ]
    parsed = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in params.items()] + ["dataset=digits"]
    )
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    assert len(batch) == 14 and all("dataset=digits" in job for job in batch)
    (only_random,) = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + ["init=random"]),
        None,
    )
    assert len(only_random) == 7 and all("init=random" in job for job in only_random)  # the command line wins
    for job in batch[::2] + batch[1:2]:  # every model once, and the random init: each composes
        job_cfg = compose(["+sweep=term_project", *job])
        assert job_cfg.model.name == job[0].split("=")[1] and job_cfg.hydra.callbacks.sweep_summary


def test_slurm_launcher_config(monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("VVM_SLURM_PARTITION", "gpu-long")
    cfg = compose(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.timeout_min=600"]
    )
    lc = cfg.hydra.launcher
    assert lc._target_.endswith("SlurmLauncher")
    assert lc.partition == "gpu-long" and lc.account is None and lc.timeout_min == 600
    # one DDP rank per SLURM task; GPUs, CPUs and memory are fitted to the partition at launch (test_slurm_requests)
    assert lc.tasks_per_node == 4 and lc.gpus_per_node is None and lc.nodes == 1
    assert lc.submitit_folder.endswith("/.submitit/%j")
    launcher = instantiate(lc)
    assert type(launcher).__name__ == "VVMSlurmLauncher" and launcher.params["partition"] == "gpu-long"

    monkeypatch.delenv("VVM_SLURM_PARTITION")
    single = compose(["hydra/launcher=slurm", "trainer=gpu"]).hydra.launcher
    assert single.partition is None and single.tasks_per_node == 1


def test_resume_command_from_multirun_yaml(tmp_path):
    sweep_dir = tmp_path / "multirun" / "d" / "t"
    sweep_dir.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "hydra": {
                    "overrides": {
                        "hydra": ["hydra.sweep.dir=old", "hydra.mode=MULTIRUN", "hydra/launcher=slurm"],
                        "task": ["+sweep=term_project", "dataset=digits", "resume=false"],
                    }
                }
            }
        ),
        sweep_dir / "multirun.yaml",
    )
    cmd = resume_command(sweep_dir, ["train.epochs=1"])
    assert cmd[1:] == [
        "-m",
        "vvm",
        "-m",
        "+sweep=term_project",
        "dataset=digits",
        "resume=true",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep_dir}",
        "train.epochs=1",
    ]
    with pytest.raises(InputError, match="not a Hydra sweep directory"):
        resume_command(tmp_path)


@pytest.mark.slow
def test_ddp_sweep_runs_each_job_once(tmp_path):
    """trainer=ddp in a local multirun: each job starts its own rank 1 as a single run of that job (Lightning
    would otherwise re-run the whole sweep in every rank); two CPU processes stand in for two GPUs."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    proc = run_vvm(["-m", "model=r18,r34", *FAST, *ddp], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert out.count("Launching 2 jobs locally") == 1 and out.count("sweep summary: 2/2 jobs ok") == 1
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    assert [r["status"] for r in read_csv(sweep_dir / "summary.csv")] == ["ok", "ok"]
    assert sorted(p.parent.name for p in sweep_dir.glob("*/train_ddp_process_1.log")) == ["0", "1"]
    assert not (tmp_path / "outputs").exists()  # rank 1 wrote into the job's dir, not a run dir of its own


@pytest.mark.slow
def test_submitit_local_launcher_sweep(tmp_path):
    """The SLURM launcher's code path without SLURM: submitit runs each job in its own process, the failing
    job is recorded there, and the summary is written here once every job has returned."""
    sweep_dir = tmp_path / "multirun" / "sl"
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    run_vvm(
        ["-m", "model.name=does_not_exist,r18", *FAST, *launcher, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["model"], r["status"]) for r in rows] == [("does_not_exist", "failed"), ("r18", "ok")]
    assert (sweep_dir / ".submitit").is_dir()
    assert_figures(sweep_dir)
