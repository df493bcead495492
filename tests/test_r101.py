"""model=r101: the term project's fifth CIFAR ResNet (bottlenecks [3, 4, 23, 3], CIFAR stem), added by one
registration (the worked example of docs/architecture.md's "how to add a model family")."""

from __future__ import annotations

import json

import pytest
from compose import compose_settings
from helpers import run_vvm

from vvm.models import count_parameters, create, family_of, trained_by_vvm
from vvm.pipeline.steps import run


def bottleneck_resnet_parameters(blocks: list[int], classes: int) -> int:
    """The parameter count of a CIFAR bottleneck ResNet, from the architecture alone: a 3x3 stem conv (64, no
    bias) + BN, stages of bottlenecks (1x1, 3x3, 1x1 convs without bias, each + BN; expansion 4; a 1x1 conv + BN
    shortcut where the shape changes), a linear head."""

    def block(inp: int, planes: int, projected: bool) -> int:
        convs = inp * planes + 9 * planes * planes + planes * 4 * planes
        bns = 2 * (planes + planes + 4 * planes)
        shortcut = inp * 4 * planes + 2 * 4 * planes if projected else 0
        return convs + bns + shortcut

    total, inp = 3 * 64 * 9 + 2 * 64, 64
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for j in range(n):
            total += block(inp, planes, projected=j == 0 and (stage > 0 or inp != 4 * planes))
            inp = 4 * planes
    return total + inp * classes + classes


def test_r101_has_the_parameters_of_a_3_4_23_3_bottleneck_resnet():
    expected = bottleneck_resnet_parameters([3, 4, 23, 3], 100)
    assert expected == 42_697_380  # about 42.7 M
    assert count_parameters(create("r101", num_classes=100)) == expected
    assert count_parameters(create("r50", num_classes=100)) == bottleneck_resnet_parameters([3, 4, 6, 3], 100)


def test_r101_is_a_cifar_resnet_vvm_trains():
    net = create("r101", num_classes=10).net
    assert net.stem.conv.kernel_size == (3, 3) and net.stem.conv.stride == (1, 1)
    assert not any(type(m).__name__.startswith("MaxPool") for m in net.modules())  # no max-pool
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert family_of("r101") == "resnet" and trained_by_vvm("r101")


@pytest.mark.parametrize(
    ("layers", "n_layers"),
    [
        pytest.param("blocks", 35, marks=pytest.mark.slow),
        pytest.param("all", 310, marks=pytest.mark.slow),
        pytest.param("term_project", 202, marks=pytest.mark.slow),
    ],
)
def test_r101_runs_with_every_layer_selection(tmp_path, layers, n_layers):
    job = compose_settings(
        ["model=r101", "init=random", "dataset=digits", "dataset.limit=64", "similarity.max_samples=16",
         "similarity.batch_size=16", f"similarity.layers={layers}", "logger=none", "trainer=cpu",
         "trainer.enable_progress_bar=false"],
        tmp_path,
    )  # fmt: skip
    summary = run(job)
    assert summary["status"] == "ok" and summary["n_samples"] == 16 and summary["family"] == "resnet"
    presets = create("r101", num_classes=10).layer_presets()
    assert summary["layers_x"] == presets[layers] and len(presets[layers]) == (
        n_layers or len(presets[layers])
    )
    assert (tmp_path / "cka.npz").is_file()


def test_compare_r101_node_exists(tmp_path):
    job = compose_settings(["compare=r101", "dataset=digits"], tmp_path)
    assert job.compare.name == "r101" and type(job.compare).entry == "r101"


@pytest.mark.slow
def test_r101_trains_one_epoch_on_digits(tmp_path):
    """``init=pretrained``: one epoch of the recipe on digits, cached, then CKA (a few minutes on 2 cores)."""
    out = tmp_path / "run"
    run_vvm(
        ["model=r101", "init=pretrained", "dataset=digits", "train.epochs=1", "train.precise_bn=512",
         "similarity.max_samples=64", "logger=none", f"paths.checkpoints={tmp_path / 'ckpt'}", f"hydra.run.dir={out}"],
        tmp_path, timeout=1800,
    )  # fmt: skip
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["trained"] is True and res["train_epochs"] == 1
    assert res["checkpoint"].split("/")[-1].startswith("r101-digits-e1-s0-")
