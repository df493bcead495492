"""Linear probes against scikit-learn: the same pooled features, the same ridge strength, the same accuracy (and
the same examples right); the held-out choice of the strength; separable data; the memory limit; the binomial
standard error, the paired difference and McNemar's exact test against scipy and brute-force sums."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from sklearn.linear_model import Ridge, RidgeClassifier
from torch import nn

from vvm.analyses import RidgeStats, linear_probe
from vvm.analyses.paired import binomial_se, mcnemar_exact, paired_comparison
from vvm.analyses.probe import ProbeParams, ProbeResult, one_vs_rest, probe_plans

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
        right = sk.predict(f_eval[name]) == y[500:].numpy()
        assert (res.correct[i] != right).sum() <= 1  # the same examples right (a near-tie may flip one)
        assert res.accuracy[i] == res.correct[i].mean()
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
    fit, hold, ev = probe_plans(100, 30, ProbeParams(max_train=50, holdout=0.2, batch_size=16))
    flat_fit, flat_hold = sum(fit, []), sum(hold, [])
    assert len(flat_fit) == 40 and len(flat_hold) == 10 and not set(flat_fit) & set(flat_hold)
    assert sorted(sum(ev, [])) == list(range(30))
    assert probe_plans(100, 30, ProbeParams(max_train=50)) == probe_plans(100, 30, ProbeParams(max_train=50))
    with pytest.raises(ValueError, match="holdout"):
        probe_plans(100, 30, ProbeParams(holdout=1.0))


# ------------------------------------------------------------------------------------------ uncertainty
def test_binomial_se_is_the_binomial_standard_deviation_of_the_accuracy():
    for n, a in [(360, 0.9), (10000, 0.5), (50, 0.02), (20, 1.0)]:
        ref = scipy_stats.binom(n, a).std() / n
        assert float(binomial_se(a, n)) == pytest.approx(ref, rel=1e-12, abs=1e-15)


def brute_mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar by enumeration in rationals: the probability, under Binomial(b + c, 1/2), of a
    split at least as uneven as the one seen."""
    n = b + c
    seen = abs(b - c)
    p = sum(Fraction(math.comb(n, i), 2**n) for i in range(n + 1) if abs(2 * i - n) >= seen)
    return float(p)


def test_mcnemar_exact_against_scipy_and_an_enumeration():
    for b, c in itertools.chain(
        [(0, 0), (0, 1), (5, 5), (3, 11), (40, 20), (1, 60)], [(700, 760), (2, 3000)]
    ):
        p = mcnemar_exact(b, c)
        if b + c:
            assert p == pytest.approx(scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
        if b + c <= 1500:
            assert p == pytest.approx(brute_mcnemar(b, c), rel=1e-9, abs=1e-300)
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_difference_and_its_standard_error():
    rng = np.random.default_rng(3)
    a = rng.random(500) < 0.8
    b = np.where(rng.random(500) < 0.9, a, ~a)  # b agrees with a on 90% of the examples
    c = paired_comparison(a, b)
    d = a.astype(float) - b.astype(float)
    assert c["difference"] == pytest.approx(a.mean() - b.mean())
    assert c["difference_se"] == pytest.approx(d.std() / math.sqrt(d.size), rel=1e-12)  # the SE of a mean
    assert c["only_a"] == int((a & ~b).sum()) and c["only_b"] == int((~a & b).sum())


def probe_result(correct: np.ndarray) -> ProbeResult:
    layers = [f"l{i}" for i in range(correct.shape[0])]
    z = np.zeros(len(layers))
    return ProbeResult(
        layers=layers,
        accuracy=correct.mean(1),
        ridge=z + 1,
        ridge_relative=z + 1,
        holdout_accuracy=z,
        dims=z,
        depth=z,
        n_train=10,
        n_holdout=2,
        n_eval=correct.shape[1],
        num_classes=10,
        correct=correct,
    )


def test_summary_says_when_the_best_layer_is_not_separable_from_the_next():
    rng = np.random.default_rng(0)
    best = rng.random(400) < 0.9
    close = best.copy()
    close[np.flatnonzero(best)[:3]] = False  # 3 fewer right: within noise
    far = rng.random(400) < 0.6
    res = probe_result(np.stack([far, best, close]))
    s = res.summary()
    assert s["best_layer"] == "l1" and s["runner_up"] == "l2"
    assert s["best_separable"] is False and s["not_separable_from_best"] == ["l2"]
    assert "NOT separable" in s["best_note"]
    assert s["best_vs_runner_up"]["mcnemar_p"] == pytest.approx(scipy_stats.binomtest(0, 3, 0.5).pvalue)
    np.testing.assert_allclose(
        s["accuracy_se"], np.round(np.sqrt(res.accuracy * (1 - res.accuracy) / 400), 5)
    )
    np.testing.assert_allclose(res.arrays()["accuracy_se"], binomial_se(res.accuracy, 400))
    # far apart: separable
    s2 = probe_result(np.stack([far, best])).summary()
    assert s2["best_separable"] is True and s2["not_separable_from_best"] == []
    assert res.arrays()["mcnemar_p_vs_best"][1] == 1.0
