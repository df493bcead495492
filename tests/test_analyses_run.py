"""The analyses of one job on real vvm models and digits: every family runs, the files hold what the issue
names, the figures are drawn; the sweep's cross-family figures from plain records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vvm.analyses import (
    AttentionParams,
    ERFParams,
    ProbeParams,
    check_names,
    run_analyses,
)
from vvm.data import DigitsDataModule
from vvm.io import load_npz
from vvm.models import create
from vvm.plots.analyses_sweep import sweep_figure
from vvm.plots.heatmap import save_figure

SMALL = {
    "erf": ERFParams(
        n_images=2, units_per_image=4
    ),  # 8 (image, unit) pairs: some units of a ReLU output are dead
    "attention": AttentionParams(n_images=2),
    "probe": ProbeParams(holdout=0.25, batch_size=64),
}


def digits(limit: int = 16) -> DigitsDataModule:
    return DigitsDataModule(limit=limit, eval_batch_size=16)


def tiny_vit():
    return create(
        "timm",
        arch="vit_tiny_patch16_224",
        num_classes=10,
        timm_kwargs={"img_size": 32, "patch_size": 8, "depth": 2},
    )


def run(model, tmp_path, names=("erf", "attention", "probe"), layers="blocks", limit=16):
    dm = digits(limit)
    model.set_data_normalization(dm.mean, dm.std)
    return run_analyses(list(names), model, layers, dm, tmp_path, SMALL, title=model.name)


def check_files(tmp_path, out, n_layers: int, n: int = 16) -> None:
    erf = load_npz(tmp_path / "erf.npz")
    assert {"layers", "maps", "radius50", "radius90", "n_images"} <= set(erf)
    assert erf["maps"].shape[0] == len(erf["layers"]) == len(erf["radius50"]) and erf["n_images"] == 2
    finite = np.isfinite(erf["radius50"])
    assert (erf["radius90"][finite] >= erf["radius50"][finite]).all()
    assert set(erf["layers"][~finite]) == set(out["erf"]["zero"])
    probe = load_npz(tmp_path / "probe.npz")
    assert {"layers", "accuracy", "ridge", "n_train", "n_eval"} <= set(probe)
    assert len(probe["layers"]) == n_layers and probe["n_train"] == n and probe["n_eval"] == n
    assert ((probe["accuracy"] >= 0) & (probe["accuracy"] <= 1)).all()
    for name in ("erf", "probe"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.pdf").exists()
        assert out[name]["files"]["png"] == str(tmp_path / f"{name}.png") and out[name]["seconds"] >= 0


def test_resnet_job(tmp_path):
    out = run(create("r18", num_classes=10), tmp_path)
    check_files(tmp_path, out, n_layers=10)
    assert out["erf"]["skipped"] == {"fc": "no spatial layout (a flat output)"}
    assert out["attention"]["applies"] is False and "CNN" in out["attention"]["note"]
    assert not (tmp_path / "attention.npz").exists()


def test_lambda_resnet_job(tmp_path):
    # lambda_r26 is slow on a CPU: 8 images a split, the stem, the first lambda block and the head
    out = run(create("lambda_r26", num_classes=10), tmp_path, layers=["stem", "layer1.0", "fc"], limit=8)
    check_files(tmp_path, out, n_layers=3, n=8)
    assert out["attention"]["applies"] is False and "lambda" in out["attention"]["note"]
    # the content lambda summarises the whole map: the first lambda block already sees every pixel
    erf = load_npz(tmp_path / "erf.npz")
    assert (erf["maps"][1] > 0).sum() == 32 * 32


def test_vit_job(tmp_path):
    out = run(tiny_vit(), tmp_path)
    check_files(tmp_path, out, n_layers=5)  # patch_embed, blocks.0, blocks.1, norm, head
    # per unit, the final LayerNorm's channels depend on the image: no zero map (the channel sum of a random-init
    # LayerNorm, scale 1 and shift 0, is 0 whatever the image: analysis.erf.mode=channel_sum gives it a zero map)
    assert out["erf"]["zero"] == {} and out["erf"]["mode"] == "unit"
    erf = load_npz(tmp_path / "erf.npz")
    assert erf["units"].tolist() == [64] * 4 and erf["channels"].tolist() == [192] * 4
    att = load_npz(tmp_path / "attention.npz")
    assert att["distance"].shape == (2, 3) and list(att["blocks"]) == ["blocks.0.attn", "blocks.1.attn"]
    assert att["n_images"] == 2 and out["attention"]["applies"] is True
    assert (tmp_path / "attention.png").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:ERF. layer 'norm'")  # a random-init LayerNorm: see test_vit_job
def test_vit_l32_job(tmp_path):
    out = run(create("vit_l32", num_classes=10), tmp_path)
    check_files(tmp_path, out, n_layers=27)
    att = load_npz(tmp_path / "attention.npz")
    assert att["distance"].shape == (24, 16) and tuple(att["image_size"]) == (224, 224)
    assert load_npz(tmp_path / "erf.npz")["maps"].shape[1:] == (224, 224)


def test_unknown_analysis_is_an_error():
    assert check_names(["probe", "erf", "probe"]) == ["probe", "erf"]
    with pytest.raises(ValueError, match="choose from erf, attention, probe"):
        check_names(["erf", "cka"])


def _records():
    recs = []
    rng = np.random.default_rng(0)
    for model, family in (("r18", "resnet"), ("lambda_r26", "lambda_resnet"), ("vit_l32", "vit")):
        for init in ("random", "pretrained"):
            n = 6
            rec = {
                "model": model,
                "family": family,
                "init": init,
                "depth": (np.arange(n) + 1) / n,
                "radius50": np.sort(rng.uniform(1, 8, n)),
                "radius90": np.sort(rng.uniform(8, 16, n)),
                "image_size": np.array([32, 32]),
                "accuracy": rng.uniform(0.2, 1, n),
            }
            if family == "vit":
                rec["distance"] = rng.uniform(10, 100, (4, 16))
            recs.append(rec)
    return recs


@pytest.mark.parametrize("kind", ["erf", "attention", "probe"])
def test_sweep_figures_from_plain_records(tmp_path, kind):
    fig = sweep_figure(kind, _records(), title=f"digits sweep: {kind}")
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "r18 · random" in labels or kind == "attention"
    if kind == "attention":
        assert labels == ["vit_l32 · random", "vit_l32 · pretrained"]
        assert "not applicable: r18 · random" in fig.axes[0].get_title(loc="left")
        lines = fig.axes[0].get_lines()
        assert [ln.get_linestyle() for ln in lines] == ["--", "-"]
    paths = save_figure(fig, tmp_path / f"summary_{kind}")
    assert all(p.stat().st_size > 0 for p in paths)


def test_sweep_figure_errors():
    with pytest.raises(ValueError, match="use one of erf, attention, probe"):
        sweep_figure("cka", _records())
    with pytest.raises(ValueError, match="no record holds the attention arrays"):
        sweep_figure("attention", [r for r in _records() if r["family"] != "vit"])


@pytest.mark.filterwarnings("ignore:ERF")
def test_analyses_leave_the_model_as_they_found_it(tmp_path):
    model = tiny_vit().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, tmp_path, names=("erf", "attention"))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(b.attn.fused_attn for b in model.net.blocks)
