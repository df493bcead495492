"""vvm.diff's significance (issue 19.7): the t quantile the intervals use, Welch–Satterthwaite degrees of freedom
for independent runs, and Benjamini–Hochberg over the map (checked against scipy's false_discovery_control)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from vvm.diff import benjamini_hochberg, cka_difference, difference_df, main, significance
from vvm.io import load_npz


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(0)
    for trial in range(20):
        # a mixture of nulls (uniform) and effects (near 0), with undefined entries
        p = np.concatenate([rng.uniform(size=60), rng.uniform(0, 0.01, size=rng.integers(0, 20))])
        p = rng.permutation(p).reshape(-1, 1) if trial % 2 else rng.permutation(p)
        p.flat[rng.choice(p.size, 5, replace=False)] = np.nan
        for q in (0.01, 0.05, 0.2):
            finite = np.isfinite(p)
            want = np.zeros(p.shape, dtype=bool)
            want[finite] = stats.false_discovery_control(p[finite], method="bh") <= q
            np.testing.assert_array_equal(benjamini_hochberg(p, q), want)


def test_benjamini_hochberg_by_hand():
    # m = 5 (NaN not tested), q = 0.05: thresholds 0.01 0.02 0.03 0.04 0.05; the largest k with p_(k) <= k q / m
    # is 3 (0.029 <= 0.03), so the three smallest are rejected, 0.025 too although it is above its own 0.02
    p = np.array([0.5, 0.025, 0.029, 0.001, np.nan, 0.051])
    assert benjamini_hochberg(p, 0.05).tolist() == [False, True, True, True, False, False]
    assert not benjamini_hochberg(np.full(3, np.nan), 0.05).any()
    with pytest.raises(ValueError, match="fdr=1.5"):
        benjamini_hochberg(p, 1.5)


def test_per_entry_test_uses_the_t_quantile_of_the_intervals():
    """With 3 batches (2 degrees of freedom) the 95% quantile is 4.30, not 2: an entry 3 standard errors from 0
    is not significant, one 5 away is."""
    diff = np.array([[0.0, 0.3], [0.5, np.nan]])
    se = np.array([[0.0, 0.1], [0.1, 0.1]])
    got = significance(diff, se, np.full(diff.shape, 2.0))
    q = stats.t.ppf(0.975, 2)
    assert q == pytest.approx(4.3027, abs=1e-4)
    assert got["significant"].tolist() == [[False, False], [True, False]]
    assert got["p_value"][0, 1] == pytest.approx(2 * stats.t.sf(3.0, 2))
    assert math.isnan(got["p_value"][0, 0]) and math.isnan(got["p_value"][1, 1])  # undefined: not tested


def _write(path, cka, se, n_batches, **extra):
    layers = np.array([f"l{i}" for i in range(cka.shape[0])])
    np.savez(path, cka=cka, cka_stderr=se, layers_x=layers, layers_y=layers, n_batches=n_batches, **extra)
    return path


def test_independent_runs_use_welch_satterthwaite_and_the_map_is_saved(tmp_path):
    rng = np.random.default_rng(1)
    cka_a, cka_b = rng.uniform(0.3, 0.9, (6, 6)), rng.uniform(0.3, 0.9, (6, 6))
    se_a, se_b = rng.uniform(0.01, 0.1, (6, 6)), rng.uniform(0.01, 0.1, (6, 6))
    a = _write(tmp_path / "a.npz", cka_a, se_a, 5)
    b = _write(tmp_path / "b.npz", cka_b, se_b, 9)
    d = cka_difference(a, b)
    va, vb = se_a**2, se_b**2
    np.testing.assert_allclose(d["df"], (va + vb) ** 2 / (va**2 / 4 + vb**2 / 8))
    t = np.abs(cka_a - cka_b) / np.sqrt(va + vb)
    np.testing.assert_array_equal(d["significant"], t > stats.t.ppf(0.975, d["df"]))
    assert not bool(d["paired"]) and math.isnan(float(d["fdr"]))
    fdr = cka_difference(a, b, fdr=0.05)
    assert (fdr["significant"] <= d["significant"]).all()  # BH over 36 entries is stricter than per entry
    assert main([str(a), str(b), "--out", str(tmp_path / "d"), "--fdr", "0.05"]) is None
    saved = load_npz(tmp_path / "d" / "diff.npz")
    assert float(saved["fdr"]) == 0.05 and float(saved["level"]) == 0.95
    np.testing.assert_array_equal(saved["significant"], fdr["significant"])
    np.testing.assert_allclose(saved["p_value"], fdr["p_value"])


def test_paired_runs_have_batches_minus_one_degrees_of_freedom():
    z = {"cka": np.zeros((2, 2)), "batch_ids": np.arange(7)}
    np.testing.assert_array_equal(difference_df(z, z, True), np.full((2, 2), 6.0))


def test_cli_refuses_levels_outside_0_1(tmp_path, capsys):
    a = _write(tmp_path / "a.npz", np.eye(2), np.zeros((2, 2)), 3)
    with pytest.raises(SystemExit):
        main([str(a), str(a), "--out", str(tmp_path / "d"), "--fdr", "5"])
    assert "--fdr 5.0: use a number between 0 and 1" in capsys.readouterr().err
