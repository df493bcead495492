"""Training for init=pretrained: the device-resident pipeline (on the CPU), the checkpoint cache, resuming an
interrupted training, CKA during training, and DDP on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from compose import compose_settings
from helpers import TINY_R18, build_job, compose_error, run_vvm, weights_of
from torch.utils.data import DistributedSampler, TensorDataset

from vvm.train.gpu_data import (
    Augmentation,
    DeviceBatches,
    augmentation_for,
    normalise,
    random_crop,
    random_flip,
    shard_indices,
)

# tiny runs: r18 on 8x8 synthetic images (32 train, 32 test), batches of 16
TINY = [*TINY_R18, "trainer.enable_progress_bar=false", "logger=none"]


def compose_job(tmp_path: Path, *overrides: str):
    """The job's settings as the CLI composes them, writing into ``tmp_path``."""
    from compose import compose_settings

    return compose_settings([f"paths.checkpoints={tmp_path / 'ckpt'}", *overrides], out_dir=tmp_path / "run")


def build(job):
    dm, model = build_job(job)
    return model, dm


def cache_key(job) -> str:
    from helpers import job_cache

    return job_cache(job).key


# ------------------------------------------------------------------------------------------ device pipeline
def test_random_crop_is_a_window_of_the_zero_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (400, 3, 6, 5), generator=g, dtype=torch.uint8)  # no zeros: padding is visible
    p = 2
    out = random_crop(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    seen = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])
        ]
        assert hits, f"image {i} is not a crop of its padded self"
        seen.update(hits)
    assert len(seen) == (2 * p + 1) ** 2  # every offset occurs (400 draws of 25)
    assert torch.equal(random_crop(x, 0), x)


def test_random_flip_mirrors_about_half():
    x = torch.arange(3 * 4 * 5, dtype=torch.uint8).view(1, 3, 4, 5).repeat(1000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())
    assert 400 < int(flipped.sum()) < 600


def test_normalise_matches_the_datamodule_transform():
    from vvm.data import DigitsDataModule

    dm = DigitsDataModule(limit=50)
    images, labels = dm.as_tensors("test")
    ds = dm.dataset("test")
    ref = torch.stack([ds[i][0] for i in range(len(ds))])
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalise(images, mean, std), ref, atol=1e-5, rtol=0)
    cl = normalise(images, mean, std, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)

    batches = DeviceBatches(images, labels, batch_size=16, mean=dm.mean, std=dm.std, shuffle=False)
    assert len(batches) == 4  # 16 16 16 2
    xs, ys = zip(*batches)
    torch.testing.assert_close(torch.cat(xs), ref, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat(ys), labels)
    assert augmentation_for(dm) == Augmentation(crop_padding=2, flip=False)


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (5, 1)])
def test_ranks_share_like_distributed_sampler(n, world):
    ds = TensorDataset(torch.arange(n))
    for rank in range(world):
        ref = list(DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False))
        assert shard_indices(n, rank=rank, world_size=world).tolist() == ref


def test_device_batches_shuffle_per_epoch_and_cover_the_split():
    images = torch.arange(37, dtype=torch.uint8).view(37, 1, 1, 1).expand(37, 3, 4, 4).contiguous()
    labels = torch.arange(37)
    epoch = {"e": 0}

    def make(rank, world):
        return DeviceBatches(
            images,
            labels,
            batch_size=8,
            mean=[0, 0, 0],
            std=[1 / 255] * 3,
            augmentation=Augmentation(1, True),
            seed=3,
            rank=rank,
            world_size=world,
            epoch_fn=lambda: epoch["e"],
        )

    one = make(0, 1)
    first = torch.cat([y for _, y in one])
    assert sorted(first.tolist()) == list(range(37)) and first.tolist() != list(range(37))
    assert torch.equal(torch.cat([y for _, y in one]), first)  # same epoch, same order
    epoch["e"] = 1
    assert not torch.equal(torch.cat([y for _, y in one]), first)
    # two ranks: equal numbers of batches, together every example (one repeated to pad 37 to 38)
    shares = [torch.cat([y for _, y in make(r, 2)]) for r in range(2)]
    assert len(make(0, 2)) == len(make(1, 2)) == 3
    assert len(shares[0]) == len(shares[1]) == 19
    assert set(torch.cat(shares).tolist()) == set(range(37))
    # augmentation keeps labels with their images: a crop of a constant image is the constant or padding
    for x, y in make(0, 1):
        vals = x.round().long()
        assert bool(((vals == y.view(-1, 1, 1, 1)) | (vals == 0)).all())


def test_gpu_resident_setting():
    from vvm.data import DigitsDataModule
    from vvm.train.fit import use_device_resident

    dm = DigitsDataModule(limit=20)
    cpu = torch.device("cpu")
    assert use_device_resident("auto", dm, cpu) is False
    assert use_device_resident(True, dm, cpu) is True
    assert use_device_resident("false", dm, cpu) is False

    class NoTensors:
        name = "imagenet"

        def as_tensors(self, split):
            raise NotImplementedError("dataset 'imagenet' has no in-memory form")

    with pytest.raises(ValueError, match="in-memory form.*gpu_resident"):
        use_device_resident(True, NoTensors(), cpu)


def test_recompute_bn_stats_averages_batch_statistics():
    from vvm.train.precise_bn import recompute_bn_stats

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    net.eval()
    batches = [(torch.randn(8, 3, 5, 5, generator=g) * (i + 1) + i, None) for i in range(4)]
    seen = recompute_bn_stats(net, batches, max_images=20)
    assert seen == 20 and not net.training and net[1].momentum == 0.1
    with torch.no_grad():
        feats = [net[0](x) for x, _ in batches]
    used = [feats[0], feats[1], feats[2][:4]]  # 8 + 8 + 4 images
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in used]).mean(0)
    var = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1) for f in used]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert int(net[1].num_batches_tracked) == 3


def test_fit_precision(monkeypatch):
    from vvm.train import fit

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(fit, "_cpu_has_amx", lambda: True)
    monkeypatch.setattr(fit, "_cuda_has_bf16", lambda device: True)
    assert fit.fit_precision("auto", "32-true", cpu) == "bf16-mixed"
    assert fit.fit_precision(None, "32-true", cuda) == "bf16-mixed"
    assert fit.fit_precision("auto", "16-mixed", cuda) == "16-mixed"  # the trainer's own choice stays
    assert (
        fit.fit_precision("32-true", "bf16-mixed", cuda) == "32-true"
    )  # an explicit train.speed.precision wins
    monkeypatch.setattr(fit, "_cpu_has_amx", lambda: False)
    assert fit.fit_precision("auto", "32-true", cpu) == "32-true"


# ------------------------------------------------------------------------------------------ the settings
@pytest.mark.slow
def test_speed_switches_are_found_under_train_speed(tmp_path):
    """A speed switch written at the recipe's level names where it lives; a recipe typo is refused before any
    training."""
    from vvm.schema import CONFIG_DIR, override_errors
    from vvm.train.module import VisionModule

    assert override_errors(["train.compile=true", "+train.precision=32"], CONFIG_DIR) == [
        "train.compile is not a setting of train: did you mean train.speed.compile?",
        "train.precision is not a setting of train: did you mean train.speed.precision?",
    ]
    proc = run_vvm(
        [*TINY, "train.compile=true", f"hydra.run.dir={tmp_path / 'cli'}"], cwd=tmp_path, check=False
    )
    assert proc.returncode != 0 and "did you mean train.speed.compile?" in proc.stderr
    assert "did you mean train.lr?" in compose_error([*TINY, "init=pretrained", "+train.lrr=0.05"], tmp_path)
    model, _ = build(compose_job(tmp_path, *TINY))
    with pytest.raises(TypeError, match="lrr"):
        VisionModule(model, lrr=0.05)
    assert not (tmp_path / "ckpt").exists()  # nothing trained


# ------------------------------------------------------------------------------------------ the cache
def test_the_demo_recipe_is_the_term_projects_with_more_steps(tmp_path):
    """train=demo: 4 epochs of batch 64 at lr 0.05 (23 steps an epoch on digits), the rest the default recipe; its
    own cache key (with the same epochs, the default recipe's key differs)."""
    import dataclasses

    demo = compose_job(tmp_path, "init=pretrained", "dataset=digits", "train=demo")
    default = compose_job(tmp_path, "init=pretrained", "dataset=digits", "train.epochs=4")
    assert (demo.train.epochs, demo.train.batch_size, demo.train.lr) == (4, 64, 0.05)
    moved = {"epochs", "batch_size", "lr"}
    for f in dataclasses.fields(demo.train):
        if f.name not in moved:
            assert getattr(demo.train, f.name) == getattr(default.train, f.name), f.name
    assert cache_key(demo) != cache_key(default) and cache_key(demo).startswith("r18-digits-e4-s0-")


def test_cache_key_follows_the_recipe(tmp_path):

    base = cache_key(compose_job(tmp_path, "init=pretrained", "dataset=digits", "train.epochs=20"))
    assert base.startswith("r18-digits-e20-s0-") and len(base.split("-")[-1]) == 8
    same = [
        "train.speed.compile=true",
        "train.speed.save_last_every_s=5",
        "train.speed.gpu_resident=false",
        "cka.kernel=rbf",
        "similarity.max_samples=100",
        "trainer=gpu",
        "logger=none",
        "dataset.num_workers=3",
    ]
    for o in same:
        assert cache_key(compose_job(tmp_path, "dataset=digits", "train.epochs=20", o)) == base, o
    differ = [
        "train.lr=0.05",
        "train.batch_size=128",
        "train.weight_decay=0",
        "dataset.limit=500",
        "seed=1",
        "train.epochs=21",
        "model=r34",
    ]
    keys = {cache_key(compose_job(tmp_path, "dataset=digits", "train.epochs=20", o)) for o in differ}
    assert base not in keys and len(keys) == len(differ)


def test_cache_keys_of_existing_checkpoints_stay(tmp_path):
    """The typed settings hash the same recipe as the config nodes did: existing checkpoints keep their keys."""
    job = compose_job(tmp_path, "init=pretrained", "dataset=digits", "train.epochs=20")
    assert cache_key(job) == "r18-digits-e20-s0-3282d2f7"
    # computed with the config-node code before the typed settings (commit 4972723)
    same = {
        ("dataset=synthetic", "train.epochs=20"): "r18-synthetic-e20-s0-5b39b4db",
        (
            "model=lambda_r26",
            "dataset=cifar100",
            "dataset.limit=1000",
        ): "lambda_r26-cifar100-e100-s0-21054f9e",
        ("model=r50", "dataset=imagenet", "train.epochs=3", "seed=4", "train.gradient_clip_val=1.0"): (
            "r50-imagenet-e3-s4-487df6f7"
        ),
    }
    for overrides, key in same.items():
        assert cache_key(compose_job(tmp_path, "init=pretrained", *overrides)) == key, overrides


class Boom(pl.Callback):
    """Fails at the start of the given epoch, as a killed job would stop."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("boom")


class CountBatches(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs.append(trainer.current_epoch)


RESUME_ARGS = [
    *TINY,
    "init=pretrained",
    "train.epochs=2",
    "train.speed.gpu_resident=true",
    "train.speed.channels_last=true",
    "train.speed.save_last_every_s=0",
]


def interrupt_and_resume(tmp_path: Path):
    """Train with ``RESUME_ARGS``, failing at the start of epoch 1; then train again (it resumes)."""
    job = compose_job(tmp_path, *RESUME_ARGS)
    model, dm = build(job)
    with pytest.raises(RuntimeError, match="boom"):
        weights_of(job, dm, model, callbacks=[Boom(1)])
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert len(ckpts) == 1 and ckpts[0].endswith(".last.ckpt"), ckpts

    model, dm = build(job)
    counter = CountBatches()
    info = weights_of(job, dm, model, callbacks=[counter])
    assert info["trained"] is True and info["gpu_resident"] is True
    assert info["resumed_from"].endswith(".last.ckpt") and info["train_epochs"] == 2
    assert counter.epochs == [1, 1]  # 32 images / 16: epoch 0 was not trained again
    return job, info, model


def test_interrupted_training_resumes_then_the_cache_is_used(tmp_path):
    """gpu_resident=true and channels_last=true: the GPU path's CPU fallback. Epoch 1 fails; the rerun trains
    epoch 1 only; another call loads the cached file and trains nothing."""
    job, info, model = interrupt_and_resume(tmp_path)
    final = Path(info["checkpoint"])
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # .last.ckpt removed, no temporary left
    assert 0 <= info["train_accuracy"] <= 1 and 0 <= info["val_accuracy"] <= 1
    assert all(p.is_contiguous() for p in model.parameters())  # back from channels_last after the fit
    # precise BatchNorm: statistics re-estimated from the 32 training images (2 batches), not 4 training steps
    assert int(model.net.stem.bn.num_batches_tracked) == 2

    model3, dm3 = build(job)
    counter = CountBatches()
    info3 = weights_of(job, dm3, model3, callbacks=[counter])
    assert info3["trained"] is False and info3["weights"] == f"cached checkpoint {final}"
    assert counter.epochs == [] and info3["train_accuracy"] == info["train_accuracy"]
    for k, v in model3.net.state_dict().items():
        assert torch.equal(v, model.net.state_dict()[k]), k


def test_gradient_clip_val_reaches_the_training_trainer(tmp_path):
    """train.gradient_clip_val (off in the term project's recipe) is the fit's gradient-norm clip, and part of
    the checkpoint's recipe."""
    seen = {}

    class Grab(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["clip"] = trainer.gradient_clip_val

    job = compose_job(tmp_path, *TINY, "init=pretrained", "train.epochs=1", "train.gradient_clip_val=0.5")
    model, dm = build(job)
    weights_of(job, dm, model, callbacks=[Grab()])
    assert seen["clip"] == 0.5
    plain = compose_job(tmp_path, *TINY, "init=pretrained", "train.epochs=1")
    assert cache_key(plain) != cache_key(job)


@pytest.mark.slow
def test_resumed_training_equals_uninterrupted(tmp_path):
    _, _, resumed = interrupt_and_resume(tmp_path / "a")
    job = compose_job(tmp_path / "b", *RESUME_ARGS)
    model, dm = build(job)
    info = weights_of(job, dm, model)
    assert info["resumed_from"] is None
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(v, resumed.net.state_dict()[k], atol=1e-5, rtol=1e-4, msg=k)


def test_explicit_checkpoint_and_published_weights(tmp_path, monkeypatch):
    from vvm.pipeline import weights
    from vvm.train.cache import save_trained

    trained, _ = build(compose_job(tmp_path, *TINY))
    with torch.no_grad():
        for p in trained.net.parameters():
            p.add_(1.0)
    path = save_trained(tmp_path / "mine.ckpt", trained.net, dataset_name="synthetic", facts={"note": "test"})
    job = compose_job(tmp_path, *TINY, "init=pretrained", f"init.checkpoint={path}")
    model, dm = build(job)
    info = weights_of(job, dm, model)
    assert info == {"weights": f"checkpoint {path}", "trained": False, "checkpoint": str(path)}
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, trained.net.state_dict()[k]), k
    assert not (tmp_path / "ckpt").exists()  # nothing trained, nothing cached

    # a checkpoint trained on another dataset is refused
    job = compose_job(
        tmp_path,
        "dataset=digits",
        "dataset.limit=40",
        "logger=none",
        "init=pretrained",
        f"init.checkpoint={path}",
    )
    model, dm = build(job)
    with pytest.raises(ValueError, match="synthetic"):
        weights_of(job, dm, model)

    # a model with published weights (vit_l32, timm): the models' loader, no training
    calls = []
    monkeypatch.setattr(weights, "trained_by_vvm", lambda m: False)
    monkeypatch.setattr(weights, "published_arch", lambda m: "timm/published")
    monkeypatch.setattr(weights, "load_timm_pretrained", lambda m, file: calls.append((m.name, file)))
    job = compose_job(tmp_path, *TINY, "init=pretrained")
    model, dm = build(job)
    model.net.pretrained_cfg = {"hf_hub_id": "timm/published"}
    info = weights_of(job, dm, model, callbacks=[Boom(0)])
    assert calls == [("r18", None)]
    assert info["trained"] is False and info["weights"] == "published weights (timm/published)"
    assert not (tmp_path / "ckpt").exists()


# ------------------------------------------------------------------------------------------ the CLI
def test_pretrained_trains_with_cka_probes_then_reuses_the_checkpoint(tmp_path):
    """In-process jobs (the CLI's own path is test_cli's): train, cache, probe CKA; then the cache is used."""
    from vvm.pipeline.steps import run

    ckpt = tmp_path / "ckpt"
    args = [
        *TINY,
        "init=pretrained",
        "train.epochs=2",
        "similarity.every_n_epochs=1",
        f"paths.checkpoints={ckpt}",
    ]
    run(compose_settings(args, tmp_path / "a"))
    a = json.loads((tmp_path / "a" / "result.json").read_text())
    assert a["status"] == "ok" and a["trained"] is True and a["train_epochs"] == 2
    assert a["gpu_resident"] is False  # auto on the CPU: the datamodule's own loaders
    path = Path(a["checkpoint"])
    assert path.parent == ckpt and path.name.startswith("r18-synthetic-e2-s0-") and path.suffix == ".ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [path.name]
    for epoch in ("epoch_0001", "epoch_0002"):  # CKA on the probe subset during training
        assert (tmp_path / "a" / "cka_epochs" / epoch / "cka.npz").is_file()
    assert (tmp_path / "a" / "cka.npz").is_file() and 0 <= a["test_accuracy"] <= 1
    # the file reads with weights_only=True and the models' loader
    obj = torch.load(path, weights_only=True)
    assert obj["dataset_name"] == "synthetic" and obj["vvm"]["train_epochs"] == 2

    run(compose_settings(args, tmp_path / "b"))
    b = json.loads((tmp_path / "b" / "result.json").read_text())
    assert b["status"] == "ok" and b["trained"] is False
    assert b["weights"] == f"cached checkpoint {path}" and b["checkpoint"] == str(path)
    assert b["train_accuracy"] == a["train_accuracy"]
    assert not (tmp_path / "b" / "cka_epochs").exists()  # no training, no probes
    assert b["seconds"]["weights"] < a["seconds"]["weights"]
    np.testing.assert_allclose(
        np.load(tmp_path / "b" / "cka.npz")["cka"], np.load(tmp_path / "a" / "cka.npz")["cka"], atol=1e-6
    )


@pytest.mark.slow
def test_ddp_on_cpu_trains_and_cka_matches_one_process(tmp_path):
    """trainer=ddp with 2 CPU processes (gloo): training, the cache, and CKA equal to one process with the saved
    weights (both visit the datamodule's plan: a seeded permutation in balanced batches; rank r runs r, r+2)."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "ddp"
    args = [
        *TINY,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "init=pretrained",
        "train.epochs=1",
        "similarity.batch_size=8",
        f"paths.checkpoints={ckpt}",
        f"hydra.run.dir={out}",
    ]
    run_vvm(args, cwd=tmp_path, timeout=240)
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["trained"] is True and res["train_epochs"] == 1
    assert res["n_samples"] == 32 and res["n_batches"] == 4  # 2 ranks x 2 batches of 8
    z = np.load(out / "cka.npz")

    # one process, the weights the DDP run saved, the same batches
    one = tmp_path / "one"
    run_vvm(
        [*TINY, "trainer=cpu", "init=pretrained", f"init.checkpoint={res['checkpoint']}", "similarity.batch_size=8",
         f"hydra.run.dir={one}"],
        cwd=tmp_path,
        timeout=240,
    )  # fmt: skip
    ref = np.load(one / "cka.npz")
    assert list(z["layers_x"]) == list(ref["layers_x"]) and int(ref["n_samples"]) == 32
    np.testing.assert_allclose(z["cka"], ref["cka"], atol=1e-9)


@pytest.mark.slow
def test_compiled_training_step_on_cpu(tmp_path):
    """train.speed.compile=true: the training steps run through torch.compile (inductor: a minute on 2 cores); the
    saved weights keep the network's own keys and CKA's hooks (validation, test) stay eager."""
    job = compose_job(tmp_path, *TINY, "init=pretrained", "train.epochs=1", "train.speed.compile=true")
    model, dm = build(job)
    info = weights_of(job, dm, model)
    assert info["trained"] is True
    state = torch.load(info["checkpoint"], weights_only=True)["state_dict"]
    assert set(state) == {f"model.net.{k}" for k in model.net.state_dict()}


@pytest.mark.slow
def test_acceptance_r18_digits_trains_once_to_90_percent(tmp_path):
    """The README's demo run: `python -m vvm model=r18 init=pretrained dataset=digits train=demo` reaches >= 90%
    test accuracy (for init seeds 0..4: docs/benchmarks.md), caches the checkpoint and writes CKA; the second run
    trains nothing."""
    args = [
        "model=r18",
        "init=pretrained",
        "dataset=digits",
        "train=demo",
        "logger=none",
        f"paths.checkpoints={tmp_path / 'ckpt'}",
    ]
    run_vvm([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path, timeout=900)
    a = json.loads((tmp_path / "a" / "result.json").read_text())
    assert a["status"] == "ok" and a["trained"] is True and a["test_accuracy"] >= 0.9, a
    assert (tmp_path / "a" / "cka.npz").is_file() and Path(a["checkpoint"]).is_file()
    run_vvm([*args, f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path, timeout=900)
    b = json.loads((tmp_path / "b" / "result.json").read_text())
    assert b["trained"] is False and b["weights"] == f"cached checkpoint {a['checkpoint']}"
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"])
    print(
        f"first run {a['seconds']['total']:.0f} s, test accuracy {a['test_accuracy']:.3f}; rerun {b['seconds']['total']:.0f} s"
    )
