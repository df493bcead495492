"""Weights & Biases (offline) and the CSV logger: what a job logs, read back from the run directory.

An offline W&B run is ``<run dir>/wandb/offline-run-*/``: ``run-<id>.wandb`` (the transaction log that
``wandb sync`` uploads: LevelDB-log framed protobuf records, read here with wandb's own protobuf classes) and
``files/`` (media/images/*.png, media/table/*.table.json, ...).
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_R18, run_vvm

SMALL = TINY_R18


def run_cli(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("WANDB_")
    }  # no WANDB_MODE: offline by default
    return run_vvm(args, cwd, check=check, timeout=300, env=env)


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (
            kind == 0 and length == 0
        ):  # zeros: the rest of the block is padding (a flush), the next block goes on
            pos += block - pos % block
            continue
        pos += 7
        chunk, pos = data[pos : pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def offline_run(out: Path) -> tuple[Path, list]:
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (log_file,) = runs[0].glob("*.wandb")
    return runs[0], wandb_records(log_file)


def history(records: list) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def items(records: list, kind: str) -> dict:
    """Merged key -> value of all ``summary`` or ``config`` records."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == kind:
            updates = r.summary.update if kind == "summary" else r.config.update
            for i in updates:
                out[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out


def exit_code(records: list) -> int | None:
    codes = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def artifacts(records: list, kind: str) -> dict[str, list[str]]:
    """name -> files of the artifacts of type ``kind`` a run logged (W&B's tables are artifacts too)."""
    return {
        r.artifact.name: sorted(e.path for e in r.artifact.manifest.contents)
        for r in records
        if r.WhichOneof("record_type") == "artifact" and r.artifact.type == kind
    }


def epoch_metrics(records: list) -> dict[str, str]:
    """glob -> step metric of the run's metric definitions (``define_metric``)."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "metric" and r.metric.step_metric:
            out[r.metric.glob_name or r.metric.name] = r.metric.step_metric
    return out


def test_wandb_offline_logs_every_cka_pass_and_finishes(tmp_path, monkeypatch, caplog):
    """An in-process job (the CLI's own path is test_cli's; the failing and DDP runs below go through it)."""
    from compose import compose_settings

    from vvm.pipeline.steps import run

    monkeypatch.delenv("WANDB_MODE", raising=False)  # logger.mode: auto, offline without an API key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = tmp_path / "run"
    overrides = [*SMALL, "init=pretrained", "train.epochs=2", "similarity.every_n_epochs=1",
                 f"paths.checkpoints={tmp_path}/c", "logger=wandb", f"logger.save_dir={out}"]  # fmt: skip
    with caplog.at_level("INFO", logger="vvm.pipeline.report"):
        run(compose_settings(overrides, out))
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["trained"] is True
    run_dir, records = offline_run(out)
    # where the run is, in result.json and in the job's report (the exact `wandb sync` command)
    assert res["wandb"]["mode"] == "offline" and res["wandb"]["dir"] == str(run_dir)
    assert res["wandb"]["sync"] == f"wandb sync {run_dir}" and "no W&B API key" in res["wandb"]["why"]
    (report,) = [r.getMessage() for r in caplog.records if r.name == "vvm.pipeline.report"]
    assert f"wandb sync {run_dir}" in report and f"run directory  {out}" in report
    assert "trained 2 epochs" in report and "cka            mean off-diagonal" in report
    # the result files as one artifact, kept in the run's transaction log until `wandb sync` uploads them
    assert artifacts(records, "results") == {
        "r18-pretrained-synthetic-s0-results": ["cka.npz", "result.json"]
    }
    # per-epoch values against `epoch`, the number of completed epochs, as the CKA passes during training
    assert {"val/*": "epoch", "cka_probe/*": "epoch"}.items() <= epoch_metrics(records).items()

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "vvm" and run.run_group == "r18-pretrained-synthetic"
    assert run.display_name == "r18-pretrained-synthetic-s0"
    assert set(run.tags) == {"r18", "pretrained", "synthetic"}

    rows = history(records)  # Lightning's WandbLogger: scalars, the image and the table each in a row

    def having(key: str) -> list[dict]:
        return [r for r in rows if key in r]

    assert [r["epoch"] for r in having("cka_probe/mean_offdiag")] == [1, 2] and len(
        having("cka/mean_offdiag")
    ) == 1
    for prefix, n in (("cka_probe", 2), ("cka", 1)):
        images, tables = having(f"{prefix}/heatmap/filenames"), having(f"{prefix}/table/path")
        assert len(images) == len(tables) == n
        for r in images:
            assert r[f"{prefix}/heatmap/_type"] == "images/separated" and r[f"{prefix}/heatmap/count"] == 1
            assert (run_dir / "files" / r[f"{prefix}/heatmap/filenames"][0]).is_file()
            assert "mean off-diagonal CKA" in r[f"{prefix}/heatmap/captions"][0]
        for r in tables:
            assert r[f"{prefix}/table/_type"] == "table-file"
            assert r[f"{prefix}/table/nrows"] == 100  # 10 x 10 layer pairs
            table = json.loads((run_dir / "files" / r[f"{prefix}/table/path"]).read_text())
            assert table["columns"] == ["layer_x", "layer_y", "i", "j", "cka", "stderr"]
            assert table["data"][0][:2] == ["stem", "stem"] and table["data"][0][4] == pytest.approx(1.0)
        assert all(-1 <= r[f"{prefix}/mean_offdiag"] <= 1 for r in having(f"{prefix}/mean_offdiag"))
    assert len(list((run_dir / "files" / "media" / "images").rglob("*.png"))) == 3
    assert len(list((run_dir / "files" / "media" / "table").rglob("*.table.json"))) == 3
    assert any("train/acc" in r for r in rows) and any("val/acc" in r for r in rows)  # Lightning's curves
    assert [r["epoch"] for r in having("val/acc")] == [1, 2]  # epoch N: after N completed epochs
    assert [r["epoch"] for r in having("train/acc")] == [1, 2]

    summary = items(records, "summary")
    assert summary["status"] == "ok" and summary["trained"] is True
    assert summary["epoch"] == 2  # the run ends at the epochs its weights were trained for
    assert summary["mean_cka"] == pytest.approx(res["mean_cka"])
    assert summary["test_accuracy"] == pytest.approx(res["test_accuracy"])
    config = items(records, "config")
    assert config["model"]["name"] == "r18" and config["train"]["epochs"] == 2
    assert config["tag"] == "r18-pretrained-synthetic"
    assert not {"epochs", "lr", "momentum"} & set(config)  # the config once: no flat copy of the recipe
    assert exit_code(records) == 0


@pytest.mark.slow
def test_wandb_finishes_when_training_fails(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        [
            *SMALL,
            "init=pretrained",
            "train.epochs=1",
            "train.speed.precision=bogus",  # a Trainer that cannot be built: the fit fails after W&B started
            f"paths.checkpoints={tmp_path}/c",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "bogus" in proc.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "failed" and "bogus" in res["error"]
    _run_dir, records = offline_run(out)
    assert exit_code(records) == 1  # the W&B run finished, with the failure's exit code
    summary = items(records, "summary")
    assert summary["status"] == "failed" and "bogus" in summary["error"]


@pytest.mark.slow
def test_csv_logger_gets_training_and_cka_scalars(tmp_path):
    out = tmp_path / "run"
    run_cli(
        [
            *SMALL,
            "logger=csv",
            "init=pretrained",
            "train.epochs=1",
            f"paths.checkpoints={tmp_path}/c",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    (metrics,) = out.glob("csv/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    cols = set(rows[0])
    assert {"train/acc", "val/acc", "cka/mean_offdiag", "test/acc"} <= cols
    assert any(r["cka/mean_offdiag"] for r in rows)
    assert not (out / "wandb").exists()


def test_logger_none_and_mode(monkeypatch, tmp_path):
    from vvm.loggers.logger import build_logger, wandb_mode
    from vvm.settings import WandbSettings

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert build_logger(None) is False
    assert wandb_mode(WandbSettings(mode="online")) == "online"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(WandbSettings(mode="")) == "offline"  # auto, and no API key here
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(None) == "online"
    with pytest.raises(ValueError, match="logger.mode='onlin'"):
        wandb_mode(WandbSettings(mode="onlin"))


def test_auto_mode_is_online_only_with_a_key_and_an_answer(monkeypatch, tmp_path):
    """``logger.mode=auto``: offline without an API key, offline (quickly) when the host does not answer, online
    with a key (from $WANDB_API_KEY or a netrc entry, as `wandb login` writes) and a host that answers."""
    import socket
    import time

    from vvm.loggers import wandb_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # tests/conftest.py sets it offline
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    netrc_file = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc_file))
    with socket.socket() as listening:  # a host that answers: a local port that accepts connections
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        choice = wandb_run.choose_mode("auto")
        assert choice.mode == "offline" and "no W&B API key" in choice.why
        netrc_file.write_text("machine 127.0.0.1\n  login user\n  password fake-key-0123456789\n")
        netrc_file.chmod(0o600)
        assert wandb_run.has_api_key()
        choice = wandb_run.choose_mode("auto")
        assert choice.mode == "online" and url in choice.why
    netrc_file.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "fake-key-0123456789")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    t = time.perf_counter()
    choice = wandb_run.choose_mode(None)
    assert choice.mode == "offline" and "did not answer" in choice.why
    assert time.perf_counter() - t < wandb_run.REACH_TIMEOUT_S + 1
    assert wandb_run.choose_mode("offline").mode == "offline"  # asked for: never online


def test_sweep_jobs_share_the_sweeps_group(monkeypatch):
    """In a multirun every job's W&B group is the sweep's (the summary and joint runs use the same); a single job's
    is its tag (see test_wandb_offline_logs_every_cka_pass_and_finishes for the composed config)."""
    import types

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from vvm.loggers.wandb_run import sweep_group
    from vvm.schema.store import wandb_group

    assert sweep_group("/x/multirun/2026-01-02/03-04-05") == "sweep-2026-01-02_03-04-05"
    hc = types.SimpleNamespace(mode=RunMode.MULTIRUN, sweep=types.SimpleNamespace(dir="multirun/d/t"))
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
    assert wandb_group("r18-random-digits") == "sweep-d_t"
    hc.mode = RunMode.RUN
    assert wandb_group("r18-random-digits") == "r18-random-digits"


def test_log_config_once_and_no_recipe_without_training():
    from vvm.loggers.logger import log_config

    class Logger:
        def __init__(self):
            self.logged = []

        def log_hyperparams(self, params):
            self.logged.append(params)

    config = {"model": {"name": "r18"}, "train": {"epochs": 100, "lr": 0.1}, "seed": 0}
    lg = Logger()
    log_config(lg, config, trained=False)
    log_config(lg, config)
    assert lg.logged == [{"model": {"name": "r18"}, "seed": 0}, config]


def test_vision_module_does_not_log_its_hyperparameters():
    """The recipe reaches W&B once, as the job's ``train`` settings: Lightning logs a module's hyperparameters
    (flat) unless it saved them with ``logger=False``."""
    from vvm.models import create
    from vvm.train.module import VisionModule

    module = VisionModule(create("r18", num_classes=10), epochs=3)
    assert module.hparams.epochs == 3 and module._log_hyperparams is False


@pytest.mark.slow
def test_wandb_under_ddp_logs_from_rank_zero_only(tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "init=pretrained"]
    run_cli(
        [
            *args,
            "train.epochs=1",
            "similarity.batch_size=8",
            f"paths.checkpoints={tmp_path}/c",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert json.loads((out / "result.json").read_text())["status"] == "ok"
    _run_dir, records = offline_run(out)  # exactly one run: rank 1 made none
    assert len([r for r in history(records) if "cka/heatmap/filenames" in r]) == 1
    assert exit_code(records) == 0


@pytest.mark.slow
def test_a_sweep_is_one_wandb_group_and_each_job_reports(tmp_path):
    """Every job of a sweep and the sweep's summary run share the sweep's group; a random-init job's config has
    no training recipe; each job's artifact holds its results and its vvm.log ends with its report."""
    sweep_dir = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = str(tmp_path / "no-netrc")  # no API key: auto is offline
    args = ["-m", "model=r18,r34", *SMALL[1:], "logger=wandb", f"hydra.sweep.dir={sweep_dir}"]
    run_vvm(args, tmp_path, env=env, timeout=900)
    for job, model in (("0", "r18"), ("1", "r34")):
        run_dir, records = offline_run(sweep_dir / job)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == "sweep-2026-01-02_03-04-05" and run.job_type == f"{model}-random-synthetic"
        config = items(records, "config")
        assert config["model"]["name"] == model and "train" not in config  # nothing was trained
        assert artifacts(records, "results") == {
            f"{model}-random-synthetic-s0-results": ["cka.npz", "result.json"]
        }
        log = (sweep_dir / job / "vvm.log").read_text()
        assert "vvm: job ok in" in log and f"upload with    wandb sync {run_dir}" in log
    (summary_run,) = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    (summary_file,) = summary_run.glob("*.wandb")
    (run,) = [r.run for r in wandb_records(summary_file) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "sweep-2026-01-02_03-04-05" and run.job_type == "sweep-summary"
