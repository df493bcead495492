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
        pos += 7
        if kind == 0 and length == 0:
            break
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


def test_wandb_offline_logs_every_cka_pass_and_finishes(tmp_path, monkeypatch):
    """An in-process job (the CLI's own path is test_cli's; the failing and DDP runs below go through it)."""
    from compose import compose_settings

    from vvm.pipeline import run

    monkeypatch.delenv("WANDB_MODE", raising=False)  # logger.mode: offline by default
    out = tmp_path / "run"
    overrides = [*SMALL, "init=pretrained", "train.epochs=2", "cka.every_n_epochs=1",
                 f"paths.checkpoints={tmp_path}/c", "logger=wandb", f"logger.save_dir={out}"]  # fmt: skip
    run(compose_settings(overrides, out))
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["trained"] is True
    run_dir, records = offline_run(out)

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

    summary = items(records, "summary")
    assert summary["status"] == "ok" and summary["trained"] is True
    assert summary["mean_cka"] == pytest.approx(res["mean_cka"])
    assert summary["test_accuracy"] == pytest.approx(res["test_accuracy"])
    config = items(records, "config")
    assert config["model"]["name"] == "r18" and config["train"]["epochs"] == 2
    assert config["tag"] == "r18-pretrained-synthetic"
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


def test_logger_none_and_mode():
    from vvm.loggers import build_logger, wandb_mode
    from vvm.settings import WandbSettings

    assert build_logger(None) is False
    assert wandb_mode(WandbSettings(mode="online")) == "online"
    saved = os.environ.pop("WANDB_MODE", None)
    try:
        assert wandb_mode(WandbSettings(mode="")) == "offline"
        os.environ["WANDB_MODE"] = "online"
        assert wandb_mode(None) == "online"
    finally:
        os.environ.pop("WANDB_MODE", None)
        if saved is not None:
            os.environ["WANDB_MODE"] = saved


@pytest.mark.slow
def test_wandb_under_ddp_logs_from_rank_zero_only(tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "init=pretrained"]
    run_cli(
        [
            *args,
            "train.epochs=1",
            "cka.batch_size=8",
            f"paths.checkpoints={tmp_path}/c",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert json.loads((out / "result.json").read_text())["status"] == "ok"
    _run_dir, records = offline_run(out)  # exactly one run: rank 1 made none
    assert len([r for r in history(records) if "cka/heatmap/filenames" in r]) == 1
    assert exit_code(records) == 0
