"""Linear probes against scikit-learn: the same pooled features, the same ridge strength, the same accuracy;
the held-out choice of the strength; separable data; the memory limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge, RidgeClassifier
from torch import nn

from vvm.analyses import RidgeStats, linear_probe
from vvm.analyses.probe import ProbeSettings, one_vs_rest, probe_plans

LAYERS = ["0", "2", "4"]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.Flatten(),
        nn.Linear(12 * 64, 5),
    ).eval()


def make_data(n: int, noise: float = 0.6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g) + 3.0  # an offset, as real activations have
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(99))
    y = (x.mean((2, 3)) @ w + noise * torch.randn(n, 5, generator=g)).argmax(1)
    return x, y


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def pooled_features(net, x):
    """Each layer's output averaged over space (or flat), by hooks of the test's own."""
    out = {}
    hooks = [
        net[int(n)].register_forward_hook(
            lambda m, a, o, n=n: out.__setitem__(n, (o.mean((2, 3)) if o.dim() == 4 else o).double().numpy())
        )
        for n in LAYERS
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return out


def test_probe_equals_sklearn_ridge_classifier():
    net = small_net()
    x, y = make_data(700)
    fit, hold, ev = (x[:400], y[:400]), (x[400:500], y[400:500]), (x[500:], y[500:])
    res = linear_probe(net, LAYERS, batches(*fit, 64), batches(*hold, 30), batches(*ev, 64), num_classes=5)
    assert res.n_train == 500 and res.n_holdout == 100 and res.n_eval == 200
    f_train, f_eval = pooled_features(net, x[:500]), pooled_features(net, x[500:])
    for i, name in enumerate(LAYERS):
        sk = RidgeClassifier(alpha=res.ridge[i]).fit(f_train[name], y[:500].numpy())
        acc = sk.score(f_eval[name], y[500:].numpy())
        assert abs(res.accuracy[i] - acc) <= 1 / 200 + 1e-12, (name, res.accuracy[i], acc)
    assert (res.accuracy > 0.4).all()  # the task is learnable from every layer


def test_held_out_choice_of_the_ridge_matches_sklearn():
    """For each strength: sklearn fitted on the fit part, scored on the held-out part; the probe takes the
    strongest of the best."""
    net = small_net()
    x, y = make_data(400, noise=1.5, seed=1)
    rel = [1e-4, 1e-2, 1.0, 30.0, 1e3]
    res = linear_probe(
        net,
        LAYERS,
        batches(x[:250], y[:250], 50),
        batches(x[250:350], y[250:350], 50),
        batches(x[350:], y[350:], 50),
        num_classes=5,
        ridges=rel,
    )
    feats = pooled_features(net, x[:350])
    for i, name in enumerate(LAYERS):
        f = feats[name][:250]
        scale = ((f - f.mean(0)) ** 2).sum() / f.shape[1]
        scores = [
            RidgeClassifier(alpha=r * scale)
            .fit(f, y[:250].numpy())
            .score(feats[name][250:], y[250:350].numpy())
            for r in rel
        ]
        best = max(i for i, s in enumerate(scores) if s == max(scores))
        assert res.ridge_relative[i] == rel[best]
        assert res.ridge[i] == pytest.approx(rel[best] * scale, rel=1e-9)
        assert res.holdout_accuracy[i] == pytest.approx(max(scores))


def test_ridge_statistics_match_sklearn_ridge_with_a_large_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)) * rng.uniform(0.1, 5, 20) + 1e4  # a large offset
    y = one_vs_rest(torch.as_tensor(rng.integers(0, 4, 300)), 4).numpy()
    stats = RidgeStats(20, 4)
    for i in range(0, 300, 70):
        stats.update(torch.as_tensor(x[i : i + 70]), torch.as_tensor(y[i : i + 70]))
    w, b = stats.solve([0.5, 50.0])
    for g, alpha in enumerate([0.5, 50.0]):
        sk = Ridge(alpha=alpha).fit(x, y)
        np.testing.assert_allclose(w[g].numpy(), sk.coef_.T, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b[g].numpy(), sk.intercept_, rtol=1e-6, atol=1e-6)


def test_probe_is_perfect_on_linearly_separable_data():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (240,), generator=g)
    x = 0.1 * torch.randn(240, 3, 4, 4, generator=g)
    x[:, :3] += 5.0 * torch.nn.functional.one_hot(y, 4)[:, :3, None, None]  # class 3: none of the channels
    net = nn.Sequential(nn.Identity(), nn.Conv2d(3, 3, 1)).eval()
    res = linear_probe(
        net,
        ["0", "1"],
        batches(x[:120], y[:120], 40),
        batches(x[120:160], y[120:160], 40),
        batches(x[160:], y[160:], 40),
        num_classes=4,
    )
    assert (res.accuracy == 1.0).all()


def test_probe_refuses_a_layer_above_the_memory_limit():
    net = small_net()
    x, y = make_data(60)
    with pytest.raises(ValueError, match="layer '2' has 12 pooled features") as err:
        linear_probe(net, LAYERS, batches(x, y, 30), [], [], num_classes=5, max_gram_mib=1e-3, ridges=[1.0])
    assert "MiB" in str(err.value) and "max_gram_mib" in str(err.value)


def test_probe_plans_are_seeded_and_disjoint():
    fit, hold, ev = probe_plans(100, 30, ProbeSettings(max_train=50, holdout=0.2, batch_size=16))
    flat_fit, flat_hold = sum(fit, []), sum(hold, [])
    assert len(flat_fit) == 40 and len(flat_hold) == 10 and not set(flat_fit) & set(flat_hold)
    assert sorted(sum(ev, [])) == list(range(30))
    assert probe_plans(100, 30, ProbeSettings(max_train=50)) == probe_plans(
        100, 30, ProbeSettings(max_train=50)
    )
    with pytest.raises(ValueError, match="holdout"):
        probe_plans(100, 30, ProbeSettings(holdout=1.0))
