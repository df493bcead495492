"""Cross-model CKA, difference maps, and the standard error of every CKA entry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from compose import compose_settings
from helpers import latent_population

from vvm.cka import StreamingCKA, gram
from vvm.diff import cka_difference
from vvm.diff import main as diff_main
from vvm.io import load_npz
from vvm.pipeline.steps import run

FAST = ["dataset=digits", "dataset.limit=96", "similarity.batch_size=32", "logger=none", "trainer=cpu"]


@pytest.mark.slow
def test_compare_two_models_rectangular(tmp_path):
    cfg = compose_settings([*FAST, "model=r18", "compare=r34", "compare_init=random"], tmp_path)
    summary = run(cfg)
    z = load_npz(tmp_path / "cka.npz")
    assert z["cka"].shape == (10, 18)  # r18 blocks x r34 blocks
    assert list(z["layers_y"])[:3] == ["stem", "layer1.0", "layer1.1"] and len(z["layers_y"]) == 18
    assert z["model_x"] == "r18" and z["model_y"] == "r34"
    assert z["cka_stderr"].shape == (10, 18)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["compare"]["model"] == "r34" and res["model_x"] == "r18" and res["model_y"] == "r34"
    assert summary["n_layers"] == [10, 18]
    assert (tmp_path / "cka.png").stat().st_size > 0 and (tmp_path / "cka.pdf").stat().st_size > 0


@pytest.mark.slow
def test_compare_with_itself_reproduces_single_run(tmp_path):
    run(compose_settings([*FAST, "model=r18"], tmp_path / "single"))
    run(compose_settings([*FAST, "model=r18", "compare=r18"], tmp_path / "pair"))
    single = load_npz(tmp_path / "single" / "cka.npz")
    pair = load_npz(tmp_path / "pair" / "cka.npz")
    np.testing.assert_allclose(pair["cka"], single["cka"], rtol=0, atol=1e-12)
    assert list(pair["layers_x"]) == list(single["layers_x"]) == list(pair["layers_y"])


def test_each_model_gets_its_own_preprocessing(tmp_path):
    """A 32x32 CIFAR-stem model and a model that wants 64x64 inputs see the same examples."""
    from vvm.models import create

    small = create("r18", num_classes=10)
    big = create("r18", num_classes=10)
    big.input_size = 64
    seen = {}

    def shape_of(name):
        def hook(module, args, out):
            seen[name] = out.shape

        return hook

    small.net.stem.register_forward_hook(shape_of("small"))
    big.net.stem.register_forward_hook(shape_of("big"))
    m = StreamingCKA(small.net, ["stem", "fc"], other=big.net, other_layers=["stem", "fc"])
    x = torch.randn(8, 3, 32, 32)
    with m.track(), torch.no_grad():
        small(x)
        big(x)
    assert seen["small"][-1] == 32 and seen["big"][-1] == 64
    assert m.compute().matrix.shape == (2, 2)


@pytest.mark.slow
def test_difference_map(tmp_path):
    run(compose_settings([*FAST, "seed=1"], tmp_path / "a"))
    run(compose_settings([*FAST, "seed=2"], tmp_path / "b"))
    d = cka_difference(tmp_path / "a", tmp_path / "b")
    a, b = load_npz(tmp_path / "a" / "cka.npz"), load_npz(tmp_path / "b" / "cka.npz")
    np.testing.assert_array_equal(d["diff"], a["cka"] - b["cka"])
    diff_main([str(tmp_path / "a"), str(tmp_path / "b" / "cka.npz"), "--out", str(tmp_path / "d")])
    assert load_npz(tmp_path / "d" / "diff.npz")["diff"].shape == (10, 10)
    assert (tmp_path / "d" / "diff.png").is_file() and (tmp_path / "d" / "diff.pdf").is_file()
    run(compose_settings([*FAST, "similarity.layers=[stem,fc]"], tmp_path / "c"))
    with pytest.raises(ValueError, match="different layers_x"):
        cka_difference(tmp_path / "a", tmp_path / "c")


# ---------------------------------------------------------------------------------------------- standard error
def _population(n, seed):
    return latent_population(n, torch.Generator().manual_seed(seed))


def _estimate(n_batches, batch, seed):
    """Minibatch CKA of X vs Y from n_batches independent batches; returns (cka, stderr)."""
    x, y = _population(n_batches * batch, seed)
    metric = _Metric()
    for b in range(n_batches):
        sl = slice(b * batch, (b + 1) * batch)
        metric.update(torch.stack([gram(x[sl])]), torch.stack([gram(y[sl])]))
    res = metric.compute()
    return float(res.matrix[0, 0]), float(res.stderr[0, 0])


class _Metric(StreamingCKA):
    """StreamingCKA fed with kernels directly (no model): one x layer, one y layer."""

    def __init__(self):
        class _Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a = torch.nn.Identity()
                self.b = torch.nn.Identity()

        super().__init__(_Two(), ["a"], other_layers=["b"])


def test_stderr_covers_truth_and_matches_spread():
    truth, _ = _estimate(2000, 32, seed=12345)  # 64,000 examples: the minibatch CKA's limit to ~1e-3
    est = [_estimate(20, 32, seed=s) for s in range(200)]
    vals = np.array([e[0] for e in est])
    ses = np.array([e[1] for e in est])
    assert np.all(np.isfinite(ses)) and np.all(ses > 0)
    # the delta-method standard error agrees with the actual spread over independent repeats...
    assert ses.mean() / vals.std(ddof=1) == pytest.approx(1.0, abs=0.2)
    # ...and a 95% interval covers the truth at about the nominal rate
    coverage = np.mean(np.abs(vals - truth) <= 1.96 * ses)
    assert 0.88 <= coverage <= 0.99, coverage


@pytest.mark.slow
def test_stderr_shrinks_with_more_samples():
    se = {}
    for nb in (10, 40, 160):
        se[nb] = np.mean([_estimate(nb, 32, seed=1000 + s)[1] for s in range(20)])
    assert se[10] > se[40] > se[160]
    assert se[10] / se[160] == pytest.approx(4.0, rel=0.25)  # 1/sqrt(B)


def test_stderr_needs_two_batches():
    x, y = _population(32, 0)
    metric = _Metric()
    metric.update(torch.stack([gram(x)]), torch.stack([gram(y)]))
    res = metric.compute()
    assert math.isfinite(float(res.matrix[0, 0])) and math.isnan(float(res.stderr[0, 0]))
