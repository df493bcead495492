"""The end-of-job report (vvm.pipeline.report) from result.json's facts, and the third-party noise filtered while a job runs
(vvm.io.quiet_third_party). A real job's report, in vvm.log, is checked in test_wandb and test_readme."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from vvm.io import quiet_third_party
from vvm.pipeline.report import job_report, result_files


def summary_of(tmp_path, **extra):
    np.savez(tmp_path / "cka.npz", n_samples=np.int64(360))
    np.savez(  # a measure on pools of a declared size, with a chance level
        tmp_path / "knn.npz", n_samples=np.int64(360), pool_size=np.int64(180), n_pools=np.int64(2),
        n_declared=np.int64(1024), chance=np.float64(10 / 179),
    )  # fmt: skip
    np.savez(tmp_path / "rdms.npz", rdm=np.zeros(3))
    (tmp_path / "result.json").write_text("{}")
    (tmp_path / "cka_epochs").mkdir(exist_ok=True)
    return {
        "model": "r18", "init": "pretrained", "dataset": "digits", "seed": 1, "status": "ok",
        "output_dir": str(tmp_path), "n_samples": 360, "test_accuracy": 0.9917,
        "weights": "trained 4 epochs, saved to checkpoints/r18.ckpt", "trained": True, "train_seconds": 1050.4,
        "files": {"npz": str(tmp_path / "cka.npz")},
        "measure_files": {
            "knn": {"npz": str(tmp_path / "knn.npz"), "png": str(tmp_path / "knn.png")},
            "rsa": {"rdms": str(tmp_path / "rdms.npz")},
        },
        "measures": {"cka": 0.61234, "knn": float("nan")},
        "seconds": {"total": 12.25},
        **extra,
    }  # fmt: skip


def test_report_says_what_the_job_did(tmp_path):
    where = {"mode": "offline", "dir": "/r/wandb/offline-run-1", "sync": "wandb sync /r/wandb/offline-run-1",
             "why": "no W&B API key here"}  # fmt: skip
    text = job_report(summary_of(tmp_path, wandb=where))
    lines = text.splitlines()
    assert lines[0] == "vvm: job ok in 12.2 s: r18 (init=pretrained, dataset=digits, seed 1)"
    rows = {line[2:15].strip(): line[17:] for line in lines[1:]}
    assert rows["run directory"] == str(tmp_path)
    assert rows["files"] == "cka.npz cka_epochs/ knn.npz rdms.npz result.json"
    assert rows["weights"] == "trained 4 epochs, saved to checkpoints/r18.ckpt (1050 s)"
    assert rows["test accuracy"] == "99.2%"
    assert rows["cka"] == "mean off-diagonal 0.6123 (n = 360 examples)"
    assert rows["knn"] == (  # from knn.npz
        "mean off-diagonal undefined (NaN) (n = 360 examples in 2 pools of 180 (declared 1024); chance 0.056)"
    )
    assert rows["W&B"] == "offline (no W&B API key here)"
    assert rows["upload with"] == "wandb sync /r/wandb/offline-run-1"
    assert sorted(p.name for p in result_files(tmp_path, summary_of(tmp_path))) == [
        "cka.npz",
        "knn.npz",
        "rdms.npz",
        "result.json",
    ]


def test_report_of_an_online_and_of_a_failed_job(tmp_path):
    where = {"mode": "online", "dir": "/r/wandb/run-1", "url": "https://wandb.ai/me/vvm/runs/abc", "why": "k"}
    text = job_report(summary_of(tmp_path, wandb=where, compare={"model": "vit_l32", "init": "random"}))
    assert "W&B run        https://wandb.ai/me/vvm/runs/abc" in text and "vs vit_l32 (init=random)" in text
    failed = {"model": "r18", "init": "random", "dataset": "digits", "seed": 0, "status": "interrupted",
              "output_dir": str(tmp_path / "gone"), "error": "interrupted (Ctrl-C or SIGTERM)",
              "resume": "python -m vvm model=r18 hydra.run.dir=x"}  # fmt: skip
    text = job_report(failed)
    assert text.startswith("vvm: job interrupted: r18")
    assert (
        "  files          (none)" in text
        and "  resume with    python -m vvm model=r18 hydra.run.dir=x" in text
    )


def test_only_the_named_third_party_noise_is_filtered(caplog):
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level("INFO"):
        warnings.simplefilter("always")  # every warning is shown, except the named ones inside
        with quiet_third_party():
            warnings.warn(
                "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1
            )
            warnings.warn("something a user should see", UserWarning, stacklevel=1)
            lightning.info("💡 Tip: For seamless cloud logging and experiment tracking, try ...")
            lightning.info("GPU available: False, used: False")
    assert [str(w.message) for w in seen] == ["something a user should see"]
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    assert not lightning.filters  # removed afterwards
