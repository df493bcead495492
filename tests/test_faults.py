"""Fault injection (issue 12): nothing silently wrong, no work thrown away, nothing to clean up by hand.

One test (or a few) per item of the issue, each asserting the exact behaviour: an error before any work that
names the key, a file moved aside, weights kept, a status written. Subprocess runs where a signal is the point
(marked slow: they train), ``tmp_path`` and monkeypatching for the rest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from compose import compose_settings
from helpers import build_job, compose_error, run_vvm, weights_of

from vvm.io import remove_stale_temporaries, temporary_path, write_json
from vvm.pipeline import preflight, weights
from vvm.pipeline import steps as pipeline
from vvm.pipeline.preflight import check_batch_plan, check_writable
from vvm.schema import CONFIG_DIR, override_errors
from vvm.settings import ConfigError

TINY = [
    "model=r18",
    "init=pretrained",
    "dataset=synthetic",
    "dataset.image_size=8",
    "dataset.train_size=48",
    "dataset.test_size=24",
    "train.epochs=2",
    "train.batch_size=16",
    "train.precise_bn=16",
    "train.speed.save_last_every_s=3600",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "similarity.batch_size=8",
]


def tiny(tmp_path: Path, *extra: str):
    job = compose_settings(
        [*TINY, f"paths.checkpoints={tmp_path / 'ckpt'}", *extra], out_dir=tmp_path / "run"
    )
    return (job, *build_job(job))


# ---------------------------------------------------------------------------------------------- 1. writable
def test_unwritable_checkpoints_is_an_error_before_training(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"paths.checkpoints=.*is a file, not a directory"):
        check_writable(a_file, "paths.checkpoints")
    with pytest.raises(ConfigError, match=r"paths.checkpoints='/proc/vvm' is not writable"):
        check_writable("/proc/vvm", "paths.checkpoints")
    job = compose_settings([*TINY, f"paths.checkpoints={a_file}"], out_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="paths.checkpoints"):
        pipeline.run(job)
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "failed" and "weights" not in res["seconds"]  # nothing trained


def test_full_disk_is_an_error_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"MiB free, and this job writes about"):
        check_writable(tmp_path, "paths.checkpoints", need_bytes=1 << 60)


def test_failed_save_keeps_the_weights_in_the_run_dir(tmp_path, monkeypatch, caplog):
    _job, _dm, model = tiny(tmp_path)
    real = weights.save_trained
    target = tmp_path / "ckpt" / "k.ckpt"

    def failing(path, *a, **kw):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        return real(path, *a, **kw)

    monkeypatch.setattr(weights, "save_trained", failing)
    kept = weights.save_or_keep(
        target, model.net, keep_dir=tmp_path / "run", dataset_name="synthetic", facts={}
    )
    assert kept == tmp_path / "run" / "k.ckpt" and kept.is_file() and not target.exists()
    assert "kept them in the run directory" in caplog.text and str(kept) in caplog.text


# ---------------------------------------------------------------------------------------------- 2, 3, 4
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "cka.kernel=rbff",
            r"Invalid value 'rbff', expected one of \[linear, rbf\]\n\s+full_key: cka.kernel",
        ),
        ("cka.estimator=nope", r"expected one of \[unbiased, biased\]\n\s+full_key: cka.estimator"),
        ("similarity.precision=half", r"expected one of \[exact, fast\]\n\s+full_key: similarity.precision"),
        ("kernel.rbf.frac=NaN", r"kernel.rbf.frac=nan must be a finite number"),
        ("kernel.rbf.frac=-1", r"kernel.rbf.frac=-1.0 must be > 0"),
        ("kernel.rbf.bandwidth=sometimes", r"expected one of \[fixed, per_batch\]"),
        ("similarity.batch_size=0", r"similarity.batch_size=0 must be >= 1"),
        ("similarity.batch_size=-1", r"similarity.batch_size=-1: the unbiased estimator needs at least 4"),
        ("similarity.batch_size=3", r"similarity.batch_size=3: the unbiased estimator needs at least 4"),
        (
            "similarity.batch_size=abc",
            r"'abc' of type 'str' could not be converted to Integer\n\s+full_key: similarity.batch_size",
        ),
        ("similarity.max_samples=0", r"similarity.max_samples=0: the unbiased estimator needs at least 4"),
        ("similarity.max_samples=-5", r"similarity.max_samples=-5"),
        ("similarity.shuffle=maybe", r"full_key: similarity.shuffle"),
        ("train.epochs=0", r"train.epochs=0 with init=pretrained: r18 is trained by vvm"),
        ("train.epochs=-1", r"train.epochs=-1 must be >= 0"),
        (
            "train.speed.gpu_resident=sometimes",
            r"train.speed.gpu_resident='sometimes' must be one of auto, true",
        ),
        ("model.name=r34", r"model.name='r34': model=r18 builds r18; use model=r34"),
        ("+cka.kernal=rbf", r"cka.kernal is not a setting of cka: did you mean cka.kernel\?"),
        ("+train.epoch=3", r"did you mean train.epochs\?"),
        ("+train.speed.compil=true", r"did you mean train.speed.compile\?"),
        ("+dataset.limt=3", r"did you mean dataset.limit\?"),
        ("+model.sed=3", r"did you mean model.seed\?"),
        ("+trainer.max_epoch=3", r"trainer.max_epoch is not a setting of trainer"),
        ("+init.chekpoint=x", r"did you mean init.checkpoint\?"),
        ("+sed=1", r"did you mean seed\?"),
    ],
)
def test_bad_settings_are_errors_naming_the_key(tmp_path, override, message):
    """Refused when the config is composed (Hydra's type and enum checks, then the schema's keys, ranges and
    rules), each naming the full key."""
    assert re.search(message, compose_error([*TINY, override], tmp_path / "run")), override


def test_booleans_take_booleans_only(tmp_path):
    """``similarity.shuffle=off`` is false (a bool node reads on/off, yes/no), not a truthy string."""
    assert compose_settings([*TINY, "similarity.shuffle=off"], tmp_path).similarity.shuffle is False
    assert compose_settings([*TINY, "similarity.shuffle=true"], tmp_path).similarity.shuffle is True


def test_biased_estimator_minimum_is_two(tmp_path):
    compose_settings([*TINY, "cka.estimator=biased", "similarity.batch_size=2"], tmp_path)
    assert "biased estimator needs at least 2" in compose_error(
        [*TINY, "cka.estimator=biased", "similarity.batch_size=1"], tmp_path
    )


def test_epochs_zero_is_fine_where_nothing_trains(tmp_path):
    compose_settings([*TINY, "init=random", "train.epochs=0"], tmp_path)


def test_a_plan_whose_batches_are_all_too_small_is_an_error(tmp_path):
    # 5 examples in batches of at most 4: balanced sizes 3 and 2, both below the unbiased minimum of 4
    job, dm, _ = tiny(tmp_path, "similarity.batch_size=4", "similarity.max_samples=5")
    with pytest.raises(ConfigError, match=r"batches of \[2, 3\].*needs at least 4 examples per batch"):
        check_batch_plan(dm, job.similarity, job.cka.estimator.value)


def test_bad_settings_fail_before_training(tmp_path):
    """The whole job: a bad layer name is an error before any training, with nothing in the cache."""
    job = compose_settings(
        [*TINY, f"paths.checkpoints={tmp_path / 'ckpt'}", "similarity.layers=[stem,layer9]"], tmp_path
    )
    t = time.perf_counter()
    with pytest.raises(
        ConfigError, match=r"similarity.layers=\['stem', 'layer9'\]: layer 'layer9' matches no module"
    ):
        pipeline.run(job)
    assert time.perf_counter() - t < 60 and not list((tmp_path / "ckpt").glob("*"))


def test_layers_that_never_run_are_an_error(tmp_path):
    class Unused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.used(x)

    model = type("M", (), {"net": Unused(), "name": "m", "input_size": 8})()
    preflight.check_layers(model, ["used"])
    with pytest.raises(ConfigError, match="spare never run in a forward pass"):
        preflight.check_layers(model, ["used", "spare"])


@pytest.mark.slow
def test_unknown_command_line_key_names_the_closest(tmp_path):
    assert override_errors(["cka.kernal=rbf", "dataset=digits"], CONFIG_DIR) == [
        "cka.kernal is not a setting of cka: did you mean cka.kernel?"
    ]
    assert (
        override_errors(["cka.kernel=rbf", "train.epochs=3", "model=timm", "model.input_size=3"], CONFIG_DIR)
        == []
    )
    assert override_errors(["model=r18,timm", "model.input_size=3"], CONFIG_DIR) == [
        "model.input_size is not a setting of model (r18): the known keys are model.name, model.num_classes, "
        "model.seed"
    ]
    proc = run_vvm(["cka.kernal=rbf"], tmp_path, check=False, timeout=120)
    assert proc.returncode == 1 and "did you mean cka.kernel?" in proc.stderr


# ---------------------------------------------------------------------------------------------- 5. resume
class InterruptAt(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _train(tmp_path: Path, ckpt: str, callbacks=()):
    job, dm, model = tiny(tmp_path, f"paths.checkpoints={tmp_path / ckpt}")
    weights_of(job, dm, model, callbacks=callbacks)
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_resumed_training_equals_uninterrupted(tmp_path):
    """Saved at the first epoch end (save_last_every_s is an hour), interrupted, resumed: the same weights."""
    straight = _train(tmp_path, "a")
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C during a fit into SystemExit(1)
        _train(tmp_path, "b", [InterruptAt(1)])
    assert len(list((tmp_path / "b").glob("*.last.ckpt"))) == 1
    resumed = _train(tmp_path, "b")
    assert not list((tmp_path / "b").glob("*.last.ckpt"))
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "k.last.ckpt"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = temporary_path(target).with_name(
        temporary_path(target).name.replace(str(os.getpid()), dead.stdout.strip())
    )
    stale.write_bytes(b"half a checkpoint")
    mine = temporary_path(target)
    mine.write_bytes(b"being written")
    assert remove_stale_temporaries(target) == [stale]
    assert not stale.exists() and mine.exists()


def test_interrupt_writes_status_interrupted_and_the_resume_command(tmp_path, monkeypatch):
    job = compose_settings([*TINY, "init=random"], out_dir=tmp_path / "run")

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "weights_and_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(job, resume_command="python -m vvm init=random hydra.run.dir=x")
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "interrupted"
    assert res["resume"] == "python -m vvm init=random hydra.run.dir=x"


# ---------------------------------------------------------------------------------------------- 6. damaged files
@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_cache_file_is_moved_aside(tmp_path, damage, caplog):
    path = tmp_path / "r18-x.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(100)}}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(4000), "empty": b""}[damage])
    assert not weights.readable_cache_file(path)
    assert not path.exists()
    aside = list(tmp_path.glob("r18-x.ckpt.corrupt-*"))
    assert len(aside) == 1 and "moved it to" in caplog.text and "trained again" in caplog.text


def test_user_checkpoint_is_never_moved_and_a_directory_is_named(tmp_path):
    from vvm.models import create
    from vvm.models.checkpoints import CheckpointMismatchError, load_checkpoint

    model = create("r18", num_classes=10)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(model, tmp_path)
    bad = tmp_path / "mine.pt"
    bad.write_bytes(b"")
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(model, bad)
    assert bad.exists() and not list(tmp_path.glob("*.corrupt-*"))


# ---------------------------------------------------------------------------------------------- 7. offline
def test_wandb_online_without_network_falls_back_to_offline_quickly(tmp_path, monkeypatch):
    from vvm.loggers import logger as loggers
    from vvm.settings import WandbSettings

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: no network
    settings = WandbSettings(project="vvm", save_dir=str(tmp_path), mode="online")
    t = time.perf_counter()
    with pytest.warns(UserWarning, match="logging offline instead: upload later with `wandb sync"):
        logger = loggers.build_logger(settings)
    assert time.perf_counter() - t < 15
    assert logger._wandb_init["mode"] == "offline" and "cannot be reached" in logger.vvm_mode.why


def test_hub_goes_offline_when_unreachable(monkeypatch):
    from vvm.models import published

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t = time.perf_counter()
    published._offline_unless_reachable("https://huggingface.co")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and time.perf_counter() - t < 15


# ---------------------------------------------------------------------------------------------- 9. umask
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_files_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        p = write_json(tmp_path / "result.json", {"a": 1})
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
