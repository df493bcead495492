"""Small models for the tests: a module tree that replays given features, layer by layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn


class Pick(nn.Module):
    def __init__(self, i: int) -> None:
        super().__init__()
        self.i = i

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return feats[self.i]


class Replay(nn.Module):
    """``Replay(L)(feats)`` runs L submodules ``l0..l{L-1}``; submodule i outputs ``feats[i]``."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"l{i}", Pick(i))
        self.n_layers = n_layers

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = [getattr(self, f"l{i}")(feats) for i in range(self.n_layers)]
        return outs[-1]

    def layer_presets(self) -> dict[str, list[str]]:
        names = [f"l{i}" for i in range(self.n_layers)]
        return {"blocks": names, "all": names, "term_project": names}


class Twice(nn.Module):
    """Runs the same ReLU twice in one forward pass (as torchvision's BasicBlock does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.lin2 = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.lin2(self.relu(self.lin1(x))))


# a small synthetic job on 16x16 images, 40 test images in batches of 20 (the measures' CLI tests)
SMALL_MEASURES_JOB = [
    "dataset=synthetic",
    "dataset.train_size=32",
    "dataset.test_size=40",
    "dataset.image_size=16",
    "similarity.batch_size=20",
    "logger=none",
    "trainer=cpu",
]


# a training of 3 epochs on 8x8 synthetic images that saves its resume point at every epoch end (the SIGTERM
# and Slurm requeue tests compare it with an uninterrupted run)
TINY_TRAINING = [
    "model=r18",
    "init=pretrained",
    "dataset=synthetic",
    "dataset.image_size=8",
    "dataset.train_size=64",
    "dataset.test_size=16",
    "train.epochs=3",
    "train.batch_size=16",
    "train.precise_bn=16",
    "train.speed.save_last_every_s=0",  # save the resume point at every epoch end
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "similarity.batch_size=8",
    "similarity.layers=[layer1,layer4]",
]


# a tiny r18 job: 8x8 synthetic images, 32 in each split, batches of 16, on the CPU
TINY_R18 = [
    "model=r18",
    "dataset=synthetic",
    "dataset.image_size=8",
    "dataset.train_size=32",
    "dataset.test_size=32",
    "similarity.batch_size=16",
    "train.batch_size=16",
    "trainer=cpu",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a DDP rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int, timeout_s: float | None = None) -> None:
    """Join a gloo process group of ``world`` processes on 127.0.0.1:``port``, one CPU thread each (the spawned
    workers of the DDP tests)."""
    import datetime
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group("gloo", rank=rank, world_size=world, **kw)
    torch.set_num_threads(1)


def make_layer_batches(batch_sizes, dims, seed=0, dtype=torch.float32):
    """Per batch, per layer features that share a latent factor (so CKA is informative)."""
    g = torch.Generator().manual_seed(seed)
    mixes = [torch.randn(4, d, generator=g, dtype=torch.float64) for d in dims]
    batches = []
    for n in batch_sizes:
        z = torch.randn(n, 4, generator=g, dtype=torch.float64)
        feats = []
        for k, (d, mix) in enumerate(zip(dims, mixes)):
            f = z @ mix + (0.3 + 0.3 * k) * torch.randn(n, d, generator=g, dtype=torch.float64)
            if k % 2:
                f = torch.relu(f)
            feats.append(f.to(dtype))
        batches.append(feats)
    return batches


def latent_population(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic problem with a known structure: X (4-d) and Y (2-d) share a 3-d latent, plus noise."""
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ax = torch.tensor(
        [[1.0, 0.5, 0.0, 2.0], [0.0, 1.0, 1.0, -1.0], [0.3, 0.0, 0.5, 0.2]], dtype=torch.float64
    )
    x = z @ ax + 0.8 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.tanh(z[:, :2] * 1.5) + 0.6 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


class Capture:
    """Records every named layer's output as it arrived (for an independent float64 computation)."""

    def __init__(self, net: nn.Module, names: list[str], *, to_cpu_double: bool = False) -> None:
        self.outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.to_cpu_double = to_cpu_double
        mods = dict(net.named_modules())
        self.handles = [mods[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, args, out):
            out = out.detach()
            self.outs[name].append(out.double().cpu() if self.to_cpu_double else out.clone())

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_vvm(
    args: list[str],
    cwd: Path,
    *,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m vvm ARGS`` in a subprocess, with this process's environment (conftest sets WANDB_MODE=offline)
    or ``env``; with ``check``, a non-zero exit fails the test with the end of its output."""
    env = {**(os.environ if env is None else env), "HYDRA_FULL_ERROR": "1", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "vvm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vvm failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def model_settings(name: str, *, num_classes: int = 10, seed: int = 0, **options):
    """The settings of model ``name`` (a registered model, else a timm architecture), as ``model=...`` makes."""
    from vvm.models import settings_classes

    classes = settings_classes()
    cls = classes.get(name, classes["timm"])
    return cls(name=name, num_classes=num_classes, seed=seed, **options)


def init_settings(init: dict):
    """``{"name": "pretrained", "checkpoint": ...}`` as :class:`vvm.settings.InitSettings`."""
    from vvm.settings.job import InitName, InitSettings

    return InitSettings(
        name=InitName(init["name"]), checkpoint=init.get("checkpoint"), weights_file=init.get("weights_file")
    )


def job_datamodule(job):
    """The datamodule of ``job`` (settings), as :func:`vvm.pipeline.steps.build` makes it."""
    from vvm.cka.pools import declared_pool
    from vvm.pipeline.objects import build_datamodule
    from vvm.settings import job_measures

    pool = declared_pool(job_measures(job.measures, job.measure, job.engine_options()).values())
    return build_datamodule(
        job.dataset, job.similarity, batch_size=job.train.batch_size, seed=job.seed, pool_size=pool
    )


def job_cache(job, settings=None):
    """Where ``job``'s model (or ``settings``' model) trained with its recipe is cached."""
    from vvm.pipeline.objects import checkpoint_cache

    return checkpoint_cache(
        settings or job.model, checkpoints=job.paths.checkpoints, dataset=job.dataset, train=job.train,
        seed=job.seed,
    )  # fmt: skip


def build_job(job):
    """The job's datamodule and first model, as :func:`vvm.pipeline.steps.run` builds them (seeded)."""
    import pytorch_lightning as pl

    from vvm.pipeline.objects import build_model

    pl.seed_everything(int(job.seed), verbose=False)
    dm = job_datamodule(job)
    return dm, build_model(job.model, dm)


def weights_of(job, dm, model, *, callbacks=(), logger=None, trains: bool = True) -> dict:
    """``job.init``'s weights into ``model`` through :func:`vvm.pipeline.weights.load_or_train`, training with the
    job's recipe when it must (``trains=False``: never); returns the facts."""
    from vvm.pipeline.weights import load_or_train
    from vvm.train.fit import Fit, trainer_factory

    fit = None
    if trains:
        fit = Fit(
            job.train, trainer_factory(job.trainer), dm, seed=job.seed, logger=logger,
            callbacks=list(callbacks), output_dir=job.paths.output_dir,
        )  # fmt: skip
    return load_or_train(
        model, job.model, job.init, dataset_name=dm.name, cache=job_cache(job), fit=fit,
        keep_dir=job.paths.output_dir,
    )  # fmt: skip


def compose_error(overrides: list[str], out_dir: Path) -> str:
    """The message (with its causes) of the error that composing ``overrides`` into settings raises."""
    from compose import compose_settings

    try:
        compose_settings(overrides, out_dir)
    except Exception as e:  # noqa: BLE001 - the test reads the message
        parts = []
        while e is not None:
            parts.append(str(e))
            e = e.__cause__ or e.__context__
        return "\n".join(parts)
    raise AssertionError(f"{overrides} composed without an error")


class WandbLogger:
    """A stand-in for Lightning's W&B logger (the class name is what ``vvm.loggers.logger`` checks) that records the
    calls ``vvm.loggers.logger.log_measure`` makes: metrics' keys, tables' keys and columns, images' keys and captions."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_metrics(self, m, step):
        self.calls.append(("metrics", sorted(m)))

    def log_table(self, key, columns, data, step):
        self.calls.append(("table", key, columns))

    def log_image(self, key, images, step, caption):
        self.calls.append(("image", key, caption[0]))
