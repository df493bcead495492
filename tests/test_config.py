"""Every model x init x dataset composes with Hydra and instantiates: model, datamodule, and the pretrained
weights (faked on disk: a state dict saved to a file stands in for a trained checkpoint or published weights)."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import warnings
from pathlib import Path

import pytest
import torch
from compose import compose_settings
from helpers import job_datamodule
from test_data import _image_folder, make_fake_cifar10, make_fake_cifar100

from vvm.data import DATASETS as REGISTERED
from vvm.models import count_parameters, from_settings, registry, trained_by_vvm
from vvm.pipeline.weights import load_or_train
from vvm.schema import CONFIG_DIR

MODELS = sorted(registry())
INITS = sorted(p.stem for p in (CONFIG_DIR / "init").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))


def test_config_groups_are_complete():
    assert set(MODELS) >= {"r18", "r34", "r50", "lambda_r26", "lambda_r38", "lambda_r50", "vit_l32", "timm"}
    assert set(INITS) == {"random", "pretrained"}
    # every registered dataset has its conf/dataset yaml and the other way round; the built-in ones are there
    assert set(DATASETS) == set(REGISTERED) >= {"cifar100", "cifar10", "imagenet", "digits", "synthetic"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_fake_cifar100(root)
    make_fake_cifar10(root)
    _image_folder(root / "imagenet" / "val", classes=3, per_class=2, seed=0)
    return root


def _overrides(model: str, init: str, dataset: str, data_root: Path) -> list[str]:
    ov = [f"model={model}", f"init={init}", f"dataset={dataset}", f"paths.data={data_root}", "logger=none"]
    ov.append("dataset.num_workers=0")
    if model == "timm":
        ov.append("model.name=resnet10t")  # any timm architecture; a small one keeps the test quick
    if dataset == "imagenet":
        ov.append("dataset.num_classes=3")  # the fake ImageFolder has 3 classes
    return ov


# the default run builds each model once (for the first class count) and checks every combination's config,
# datamodule and weight loading with it; the slow run builds each model for every class count
QUICK = ("r18", "lambda_r26")  # one build per family in the default suite; the heavier models are slow
CASES = [pytest.param(m, True, id=m, marks=() if m in QUICK else pytest.mark.slow) for m in MODELS] + [
    pytest.param(m, False, id=f"{m}-every-head", marks=pytest.mark.slow) for m in MODELS
]


@pytest.mark.parametrize("model,one_build", CASES)
def test_every_combination_instantiates(model, one_build, data_root, tmp_path):
    nets: dict[int, torch.nn.Module] = {}
    weights: dict[int, Path] = {}
    for init, dataset in itertools.product(INITS, DATASETS):
        job = compose_settings(_overrides(model, init, dataset, data_root), tmp_path / f"{init}-{dataset}")
        assert type(job.dataset) is REGISTERED[dataset].settings and job.init.name == init
        dm = job_datamodule(job)
        assert dm.num_classes == job.dataset.num_classes
        x, y = next(iter(dm.test_dataloader()))
        assert x.dim() == 4 and x.shape[1] == 3 and y.dtype == torch.int64
        nc = int(job.dataset.num_classes)
        assert job.model.num_classes == nc
        if one_build and nets:
            nc = next(iter(nets))
        if nc not in nets:
            nets.clear()
            gc.collect()
            nets[nc] = from_settings(job.model)
        vm = nets[nc]
        assert count_parameters(vm) > 0
        if init == "pretrained":
            if nc not in weights:
                path = tmp_path / f"weights-{nc}.pt"
                torch.save(vm.net.state_dict(), path)
                weights[nc] = path
            key = "checkpoint" if trained_by_vvm(vm) else "weights_file"
            init = dataclasses.replace(job.init, **{key: str(weights[nc])})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_or_train(vm, job.model, init, dataset_name=dm.name)
    nets.clear()
    gc.collect()


def test_models_accept_any_dataset_resolution():
    """A CIFAR-stem model on 224x224 ImageNet crops and ViT on 32x32 CIFAR images both run."""
    from vvm.models import create

    r18 = create("r18", num_classes=3).eval()
    with torch.no_grad():
        assert r18(torch.randn(2, 3, 64, 64)).shape == (2, 3)
