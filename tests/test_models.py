"""Models: Lambda-ResNets, timm wrappers (ViT-L/32, any timm model), generic layer presets, init=pretrained."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from helpers import init_settings, model_settings
from torch import nn

from vvm.cka.presets import PRESETS, generic_presets, resolve_layers
from vvm.models import count_parameters, create, from_settings, registry, trained_by_vvm
from vvm.models.checkpoints import CheckpointMismatchError
from vvm.pipeline.weights import load_or_train, weights_source


def create_timm(arch: str, **kw):
    return create("timm", arch=arch, **kw)


# parameter counts with 100 classes (the paper's ImageNet LambdaResNet-50 has 15.0M with 1000 classes: 13.14M
# + 2048 * 900 for the larger head)
PARAMS_100 = {
    "r18": 11_220_132,
    "r34": 21_328_292,
    "r50": 23_705_252,
    "lambda_r26": 8_274_020,
    "lambda_r38": 10_148_516,
    "lambda_r50": 13_144_068,
    "vit_l32": 305_612_900,
}
LAMBDA_BLOCKS = {"lambda_r26": 8, "lambda_r38": 12, "lambda_r50": 16}


def _lambda_layers(net: nn.Module) -> dict[str, nn.Module]:
    from timm.layers.lambda_layer import LambdaLayer

    return {n: m for n, m in net.named_modules() if isinstance(m, LambdaLayer)}


def _fired(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, int]:
    """How often each named module runs in one forward pass of ``net`` on ``x`` (and that it is batch-first)."""
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    bad: list[str] = []

    def hook(name):
        def fn(module, args, out):
            calls[name] = calls.get(name, 0) + 1
            t = out if isinstance(out, torch.Tensor) else next(o for o in out if isinstance(o, torch.Tensor))
            if t.shape[0] != x.shape[0]:
                bad.append(name)

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    assert not bad, f"not batch-first: {bad[:5]}"
    return calls


def _assert_presets_fire(net: nn.Module, x: torch.Tensor) -> dict[str, list[str]]:
    out = {}
    for preset in PRESETS:
        names = resolve_layers(net, preset)
        assert names, preset
        calls = _fired(net, names, x)
        silent = [n for n in names if calls.get(n, 0) == 0]
        assert not silent, f"preset {preset!r} lists modules that never run: {silent[:5]}"
        out[preset] = names
    return out


# ------------------------------------------------------------------------------------------------ Lambda-ResNets
@pytest.mark.parametrize("name", ["lambda_r26", "lambda_r38", "lambda_r50"])
def test_lambda_resnet_forward_and_size(name):
    model = create(name, num_classes=100, seed=0).eval()
    assert model.family == "lambda_resnet" and model.input_size is None
    assert count_parameters(model) == PARAMS_100[name]
    net = model.net
    assert isinstance(net.stem, nn.Sequential)
    assert [n for n, _ in net.stem.named_children()] == ["conv", "bn", "relu"]
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    # every bottleneck's 3x3 conv is a lambda layer: no 3x3 conv is left outside the stem
    convs3 = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs3 == ["stem.conv"]
    assert len(_lambda_layers(net)) == LAMBDA_BLOCKS[name]
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 100) and torch.isfinite(y).all()


def test_cifar_resnet_sizes():
    for name in ("r18", "r34", "r50"):
        assert count_parameters(create(name, num_classes=100)) == PARAMS_100[name]


def test_lambda_layers_are_in_the_forward_path():
    model = create("lambda_r26", num_classes=10, seed=0).eval()
    layers = _lambda_layers(model.net)
    assert len(layers) == 8
    x = torch.randn(4, 3, 32, 32)
    # a hook on every lambda layer fires exactly once per forward pass, with the batch first
    calls, shapes = {}, {}

    def hook(name):
        def fn(module, args, out):
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(out.shape)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    with torch.no_grad():
        y0 = model(x)
    for h in handles:
        h.remove()
    assert calls == dict.fromkeys(layers, 1)
    # the stride-2 lambda layers halve the map: 32, 16, 8, 4 (widths 64, 128, 256, 512)
    first = [shapes[f"layer{i}.0.lambda_layer"] for i in range(1, 5)]
    assert first == [(4, 64, 32, 32), (4, 128, 16, 16), (4, 256, 8, 8), (4, 512, 4, 4)]
    # perturbing one lambda layer's q/k/v projection, or its positional lambda conv, changes the output
    for attr in ("qkv", "conv_lambda"):
        w = getattr(layers["layer3.1.lambda_layer"], attr).weight
        with torch.no_grad():
            w.add_(0.5 * torch.randn_like(w))
            y1 = model(x)
        assert not torch.allclose(y0, y1), attr
        y0 = y1


def test_lambda_resnet_presets_resolve_and_fire():
    model = create("lambda_r26", num_classes=10, seed=0).eval()
    presets = _assert_presets_fire(model.net, torch.randn(4, 3, 32, 32))
    assert presets["blocks"][0] == "stem" and presets["blocks"][-1] == "fc"
    assert len(presets["blocks"]) == 2 + 8
    assert "layer1.0.lambda_layer" in presets["all"] and "layer4.1.relu3" in presets["all"]
    assert not any(".lambda_layer." in n for n in presets["all"])  # the lambda layer is one unit
    assert (
        "layer2.0.bn2" in presets["term_project"]
        and "avgpool" in presets["term_project"]
        and "fc" in presets["term_project"]
    )
    assert not any("conv" in n or "lambda" in n for n in presets["term_project"])


def test_seeded_construction_is_reproducible():
    a, b = create("lambda_r26", seed=3), create("lambda_r26", seed=3)
    c = create("lambda_r26", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["net.layer1.0.lambda_layer.qkv.weight"], sc["net.layer1.0.lambda_layer.qkv.weight"]
    )


# ----------------------------------------------------------------------------------------------------- timm
def _tiny_vit(num_classes: int = 10, seed: int = 0):
    return create(
        "timm",
        arch="vit_tiny_patch16_224",
        num_classes=num_classes,
        seed=seed,
        timm_kwargs={"img_size": 32, "patch_size": 8, "depth": 2},
    )


def test_generic_presets_tiny_vit():
    model = _tiny_vit().eval()
    assert model.input_size == 32 and model.family == "timm" and model.name == "vit_tiny_patch16_224"
    net = model.net
    presets = _assert_presets_fire(net, torch.randn(5, 3, 32, 32))
    assert presets["blocks"] == ["patch_embed", "blocks.0", "blocks.1", "norm", "head"]
    for sub in (
        "norm1",
        "attn.qkv",
        "attn",
        "attn.proj",
        "norm2",
        "mlp.fc1",
        "mlp.act",
        "mlp.fc2",
        "mlp",
    ):
        assert f"blocks.1.{sub}" in presets["all"], sub
    assert not any(n.endswith(("attn_drop", "drop_path1", "ls1")) for n in presets["all"])
    assert {"blocks.0.drop_path1", "blocks.0.drop_path2", "blocks.0.attn.qkv", "blocks.0.mlp.act"} <= set(
        presets["term_project"]
    )
    # fused attention skips attn_drop, so no preset may name it (StreamingCKA raises on a silent module)
    assert net.blocks[0].attn.fused_attn
    assert not any("attn_drop" in n for p in presets.values() for n in p)
    # nor Identity stand-ins other than drop_path
    assert not any(
        n.endswith(("q_norm", "k_norm", "attn.norm", "mlp.norm", "norm_pre", "fc_norm"))
        for n in presets["term_project"]
    )


def test_generic_presets_drive_streaming_cka():
    from vvm.cka.streaming import StreamingCKA

    model = _tiny_vit().eval()
    metric = StreamingCKA(model.net, "term_project")
    with metric.track(), torch.no_grad():
        for _ in range(2):
            model.net(torch.randn(6, 3, 32, 32))
    res = metric.compute()
    assert res.matrix.shape == (len(metric.layers_x),) * 2
    assert torch.isfinite(res.matrix.diagonal()).all()


def test_vit_l32_presets_on_meta_device():
    """ViT-L/32 built on the meta device (no memory, no init cost): size, preprocessing and presets."""
    with torch.device("meta"):
        model = create("vit_l32", num_classes=100)
    assert count_parameters(model) == PARAMS_100["vit_l32"]
    assert model.input_size == 224 and model.family == "vit" and model.name == "vit_l32"
    assert model.net.pretrained_cfg["tag"] == "orig_in21k"
    assert model.net.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    presets = _assert_presets_fire(model.net, torch.empty(3, 3, 224, 224, device="meta"))
    assert presets["blocks"] == ["patch_embed", *[f"blocks.{i}" for i in range(24)], "norm", "head"]
    assert len(presets["all"]) == 1 + 24 * 9 + 2  # patch_embed.proj, 9 per block, norm, head
    assert len(presets["term_project"]) == 1 + 24 * 10 + 1  # patch_embed.proj, 10 per block, norm


@pytest.mark.slow
def test_vit_l32_real_forward_resizes_32_to_224():
    model = create("vit_l32", num_classes=100).eval()
    assert count_parameters(model) == PARAMS_100["vit_l32"]
    model.set_data_normalization((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
    seen = {}
    h = model.net.patch_embed.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].shape))
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    h.remove()
    assert seen["x"] == (2, 3, 224, 224) and y.shape == (2, 100)
    _assert_presets_fire(model.net, torch.randn(2, 3, 224, 224))


def test_timm_any_model_by_name():
    model = create_timm("convnext_atto", num_classes=7, seed=0).eval()
    assert model.name == "convnext_atto" and model.family == "timm" and model.input_size == 224
    assert model.net.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    model.set_data_normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    presets = _assert_presets_fire(model.net, torch.randn(2, 3, 64, 64))
    assert presets["blocks"][0] == "stem" and presets["blocks"][-1] == "head.fc"
    assert "stages.2.blocks.1" in presets["blocks"]
    with pytest.raises(ValueError, match="convnext_tiny"):
        create_timm("convnext_tinyy", num_classes=7)


def test_generic_presets_torchvision_resnet():
    import torchvision

    net = torchvision.models.resnet18(num_classes=5).eval()
    presets = _assert_presets_fire(net, torch.randn(2, 3, 64, 64))
    assert presets["blocks"] == ["maxpool", *[f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)], "fc"]
    assert "layer1.0.relu" in presets["term_project"]  # runs twice: StreamingCKA records relu#0, relu#1


def test_generic_presets_skip_modules_that_do_not_run():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.unused_fc = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.blocks(x).mean((2, 3)))

    p = generic_presets(Net(), input_size=8)
    assert "unused_fc" not in p["all"] and "unused_fc" not in p["term_project"]
    assert p["blocks"] == ["blocks.0", "blocks.1", "fc"]


# -------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("overrides", "name", "family"),
    [
        (["model=lambda_r26"], "lambda_r26", "lambda_resnet"),
        (["model=timm", "model.name=convnext_atto"], "convnext_atto", "timm"),
    ],
)
def test_model_configs_build(overrides, name, family, tmp_path):
    from compose import compose_settings

    job = compose_settings([*overrides, "dataset=synthetic", "init=pretrained"], tmp_path)
    assert job.init.name == "pretrained" and job.init.checkpoint is None and job.init.weights_file is None
    model = from_settings(job.model)
    assert model.name == name and model.family == family
    assert model.net(torch.randn(2, 3, 32, 32)).shape == (2, job.dataset.num_classes)


def test_model_nodes_come_from_the_registry():
    """model=<name> and compare=<name> exist for every registered model, with the builder's own options."""
    from dataclasses import fields

    from vvm.models import settings_classes

    classes = settings_classes()
    assert list(classes) == list(registry())
    assert {f.name for f in fields(classes["vit_l32"])} == {"name", "num_classes", "seed", "input_size"}
    assert {f.name for f in fields(classes["r18"])} == {"name", "num_classes", "seed"}
    timm_fields = {f.name: f for f in fields(classes["timm"])}
    assert timm_fields["name"].default == "convnext_tiny" and "timm_kwargs" in timm_fields
    assert all(classes[n].__doc__ for n in classes)  # what model=<name> is, from the registry


# ------------------------------------------------------------------------------------------------------ init
def apply_init(model, init: dict, dataset_name: str | None = None):
    """``init`` through the one weights path (:func:`vvm.pipeline.weights.load_or_train`), measuring ``dataset_name``."""
    settings = model_settings(model.name, num_classes=10)
    load_or_train(model, settings, init_settings(init), dataset_name=dataset_name)
    return model


def test_init_random_changes_nothing():
    model = create("r18", num_classes=10, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert apply_init(model, {"name": "random"}) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_registry_says_which_models_vvm_trains():
    for name in ("r18", "r34", "r50", "lambda_r26", "lambda_r38", "lambda_r50"):
        assert trained_by_vvm(name)
    assert not trained_by_vvm("vit_l32") and not trained_by_vvm("convnext_tiny")
    r18 = model_settings("r18")
    assert weights_source(r18, init_settings({"name": "pretrained", "checkpoint": None})) == "trained"
    assert weights_source(r18, init_settings({"name": "pretrained", "checkpoint": "x.pt"})) == "checkpoint"
    assert weights_source(r18, init_settings({"name": "random"})) == "random"
    vit = model_settings("vit_tiny_patch16_224")
    assert weights_source(vit, init_settings({"name": "pretrained", "checkpoint": None})) == "published"
    assert weights_source(model_settings("vit_l32"), init_settings({"name": "pretrained"})) == "published"
    with pytest.raises(ValueError, match="no published weights"):
        weights_source(model_settings("no_such_arch_xyz"), init_settings({"name": "pretrained"}))


def _same(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def test_cifar_checkpoint_state_dict(tmp_path):
    trained = create("lambda_r26", num_classes=10, seed=1)
    path = tmp_path / "net.pt"
    torch.save(trained.net.state_dict(), path)
    model = create("lambda_r26", num_classes=10, seed=2)
    assert not _same(model.net, trained.net)
    apply_init(model, {"name": "pretrained", "checkpoint": str(path)}, dataset_name="cifar10")
    assert _same(model.net, trained.net)


def test_cifar_checkpoint_lightning(tmp_path):
    trained = create("r18", num_classes=10, seed=1)
    ckpt = {
        "epoch": 3,
        "state_dict": {f"model.net.{k}": v for k, v in trained.net.state_dict().items()},
        "hyper_parameters": {"dataset_name": "cifar10", "lr": 0.1},
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    model = create("r18", num_classes=10, seed=2)
    apply_init(model, {"name": "pretrained", "checkpoint": str(path)}, dataset_name="cifar10")
    assert _same(model.net, trained.net)
    with pytest.raises(CheckpointMismatchError, match="trained on 'cifar10'.*'digits'"):
        apply_init(
            create("r18", num_classes=10),
            {"name": "pretrained", "checkpoint": str(path)},
            dataset_name="digits",
        )


def test_cifar_checkpoint_errors(tmp_path):
    path = tmp_path / "r18_10.pt"
    torch.save(create("r18", num_classes=10).net.state_dict(), path)
    init = {"name": "pretrained", "checkpoint": str(path)}
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight: file \[10, 512\] vs model \[100, 512\]"):
        apply_init(create("r18", num_classes=100), init)
    with pytest.raises(CheckpointMismatchError, match="keys missing"):
        apply_init(create("r34", num_classes=10), init)
    with pytest.raises(CheckpointMismatchError, match="does not fit model 'lambda_r26'"):
        apply_init(create("lambda_r26", num_classes=10), init)
    # no checkpoint: not an error but a training (see test_registry_says_which_models_vvm_trains)
    assert weights_source(model_settings("r18"), init_settings({"name": "pretrained"})) == "trained"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        apply_init(
            create("r18", num_classes=10), {"name": "pretrained", "checkpoint": str(tmp_path / "nope.pt")}
        )
    with pytest.raises(ValueError, match="weights_file is for timm models"):
        apply_init(create("r18", num_classes=10), {"name": "pretrained", "weights_file": str(path)})
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointMismatchError, match="argparse.Namespace.*which vvm never loads") as e:
        apply_init(create("r18", num_classes=10), {"name": "pretrained", "checkpoint": str(pickled)})
    assert "weights_only" not in str(e.value)  # never torch's advice to load it unsafely


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_file_offline(tmp_path, suffix):
    published = _tiny_vit(num_classes=1000, seed=1)  # "published" weights: an ImageNet head
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in published.net.state_dict().items()}, str(path))
    else:
        torch.save(published.net.state_dict(), path)
    model = _tiny_vit(num_classes=10, seed=2)
    head = model.net.head.weight.clone()
    with pytest.warns(UserWarning, match="classifier .*head.weight.* keeps its seeded random init"):
        apply_init(model, {"name": "pretrained", "weights_file": str(path)})
    assert _same(model.net, published.net, skip=("head.",))
    assert torch.equal(model.net.head.weight, head)
    # same number of classes: the head is loaded too, without a warning
    same = _tiny_vit(num_classes=1000, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_init(same, {"name": "pretrained", "weights_file": str(path)})
    assert _same(same.net, published.net)


def test_timm_weights_file_without_head(tmp_path):
    """ImageNet-21k ViT weights (vit_l32's orig_in21k) ship without a classifier: the head stays seeded."""
    published = _tiny_vit(num_classes=0, seed=1)
    assert not any(k.startswith("head.") for k in published.net.state_dict())
    path = tmp_path / "model.pth"
    torch.save(published.net.state_dict(), path)
    model = _tiny_vit(num_classes=10, seed=2)
    seeded = _tiny_vit(num_classes=10, seed=2)
    with pytest.warns(UserWarning, match="head.bias, head.weight"):
        apply_init(model, {"name": "pretrained", "weights_file": str(path)})
    assert _same(model.net, published.net, skip=("head.",))
    assert torch.equal(model.net.head.weight, seeded.net.head.weight)


def test_timm_weights_file_errors(tmp_path, monkeypatch):
    model = _tiny_vit(num_classes=10)
    with pytest.raises(FileNotFoundError, match=r"huggingface\.co/timm/vit_tiny_patch16_224"):
        apply_init(model, {"name": "pretrained", "weights_file": str(tmp_path / "missing.safetensors")})
    other = tmp_path / "convnext.pth"
    torch.save(create_timm("convnext_atto", num_classes=10).net.state_dict(), other)
    with pytest.raises(CheckpointMismatchError, match="does not hold weights of vit_tiny_patch16_224"):
        apply_init(model, {"name": "pretrained", "weights_file": str(other)})

    # no internet and nothing cached: the error says how to get the file
    import timm.models

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm.models, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match="init.weights_file=/path/to/it"):
        apply_init(model, {"name": "pretrained"})
