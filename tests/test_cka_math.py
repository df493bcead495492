"""vvm.cka's functions against the independent float64 reference, on inputs made to be hard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import torch

from vvm.cka import cka, gram, hsic_biased, hsic_unbiased, u_centre
from vvm.cka.functional import cka_from_hsic, h_centre

KINDS = ["linear", "rbf"]
ESTIMATORS = ["unbiased", "biased"]


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def related(n, d1, d2, seed=0):
    """Two representations that share structure (so CKA is well away from 0 and 1)."""
    z = randn(n, 5, seed=seed)
    x = z @ randn(5, d1, seed=seed + 1) + 0.5 * randn(n, d1, seed=seed + 2)
    y = torch.tanh(z @ randn(5, d2, seed=seed + 3)) + 0.5 * randn(n, d2, seed=seed + 4)
    return x, y


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(
    "n,d1,d2",
    [(4, 3, 5), (5, 1, 2), (16, 2000, 3000), (64, 3, 2), (100, 50, 7), (33, 10, 400)],
    ids=["n4", "n5-d1", "d>>n", "d<<n", "mid", "odd-n"],
)
def test_cka_matches_reference(kind, estimator, n, d1, d2):
    x, y = related(n, d1, d2, seed=n + d1)
    got = cka(x, y, kernel=kind, estimator=estimator)
    want = ref.cka(x, y, kind=kind, estimator=estimator)
    assert math.isfinite(want)
    assert got == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_hsic_values_match_reference(estimator):
    x, y = related(20, 8, 6)
    k = gram(x)
    l = gram(y)  # noqa: E741
    got = hsic_unbiased(k, l) if estimator == "unbiased" else hsic_biased(k, l)
    want = ref.hsic(ref.kernel(x), ref.kernel(y), estimator)
    assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_huge_mean_offset_float32(kind, estimator):
    """Features offset by 1e4 in float32: centring first keeps CKA at the offset-free value."""
    x, y = related(64, 300, 200, seed=3)
    want = ref.cka(x, y, kind=kind, estimator=estimator)
    x32 = (x + 1e4).float()
    y32 = (y - 1e4).float()
    got = cka(x32, y32, kernel=kind, estimator=estimator)
    # float32 storage of x + 1e4 rounds x to ~5e-4 absolute; that (not the algorithm) sets the tolerance
    assert got == pytest.approx(want, abs=2e-3)
    got64 = cka(x + 1e4, y - 1e4, kernel=kind, estimator=estimator)
    assert got64 == pytest.approx(want, abs=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_rank_deficient_features(kind):
    z = randn(40, 2, seed=5)
    x = z @ randn(2, 100, seed=6)  # rank 2 in 100 dimensions
    y = torch.cat([z, z, z], dim=1)  # duplicated columns
    got = cka(x, y, kernel=kind)
    want = ref.cka(x, y, kind=kind)
    assert got == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_constant_features_are_undefined_not_zero(kind, estimator):
    x = torch.full((16, 10), 3.0, dtype=torch.float64)
    y = randn(16, 4)
    assert math.isnan(cka(x, y, kernel=kind, estimator=estimator))
    assert math.isnan(ref.cka(x, y, kind=kind, estimator=estimator))


def test_constant_float32_layer_is_exactly_undefined():
    """A constant nonzero layer (e.g. a zero-weight linear layer with a bias) in float32 must give NaN, not noise."""
    x = torch.full((64, 100), 0.1, dtype=torch.float32) + torch.linspace(0, 1, 100)
    assert math.isnan(cka(x, randn(64, 5)))
    assert torch.count_nonzero(gram(x)) == 0


def test_unrelated_features_can_be_negative():
    """The unbiased estimator is not clamped: independent features give small values of either sign."""
    vals = [cka(randn(20, 30, seed=s), randn(20, 30, seed=100 + s)) for s in range(20)]
    assert min(vals) < 0 < max(vals)
    assert max(abs(v) for v in vals) < 0.3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_invariances(kind, estimator):
    x, y = related(50, 12, 9, seed=7)
    q, _ = torch.linalg.qr(randn(12, 12, seed=8))
    base = cka(x, y, kernel=kind, estimator=estimator)
    assert cka(x @ q, y, kernel=kind, estimator=estimator) == pytest.approx(base, abs=1e-10)
    assert cka(3.7 * x, y, kernel=kind, estimator=estimator) == pytest.approx(base, abs=1e-10)
    assert cka(y, x, kernel=kind, estimator=estimator) == pytest.approx(base, abs=1e-12)
    assert cka(x, x @ q, kernel=kind, estimator=estimator) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, 0.01 * x, kernel=kind, estimator=estimator) == pytest.approx(1.0, abs=1e-10)


def test_u_centre_properties():
    k = gram(randn(10, 4))
    kt = u_centre(k)
    assert torch.all(kt.diagonal() == 0)
    # U-centred matrices have zero row sums (Székely & Rizzo, Lemma 1)
    assert torch.allclose(kt.sum(1), torch.zeros(10, dtype=torch.float64), atol=1e-10)
    # adding a constant, or a_i + b_j terms, to K leaves K̃ unchanged
    a = randn(10, seed=3)
    shifted = k + 5.0 + a[:, None] + a[None, :]
    assert torch.allclose(u_centre(shifted), kt, atol=1e-9)
    assert torch.allclose(h_centre(k).sum(0), torch.zeros(10, dtype=torch.float64), atol=1e-10)


def test_rbf_bandwidth_is_median_heuristic():
    x = randn(30, 5)
    k = gram(x, "rbf", kernel_params={"frac": 0.5}).numpy()
    assert np.allclose(k, ref.kernel(x, "rbf", 0.5), atol=1e-12)
    assert np.allclose(np.diag(k), 1.0)


def test_input_errors():
    with pytest.raises(ValueError, match="same examples"):
        cka(randn(5, 3), randn(6, 3))
    with pytest.raises(ValueError, match="n >= 4"):
        cka(randn(3, 3), randn(3, 3))
    with pytest.raises(ValueError, match="kernel='poly'"):
        cka(randn(5, 3), randn(5, 3), kernel="poly")


def test_cka_from_hsic_marks_undefined():
    out = cka_from_hsic(torch.ones(2, 2), torch.tensor([1.0, 0.0]), torch.tensor([4.0, 1.0]))
    assert out[0, 0] == 0.5
    assert torch.isnan(out[1]).all()


def test_column_blocks_change_nothing_but_rounding():
    from vvm.cka.functional import linear_gram

    x = randn(16, 3000) + 100.0
    full = linear_gram(x)
    for chunk in (16, 1000, 16 * 7, 10**9):
        torch.testing.assert_close(linear_gram(x, chunk_elements=chunk), full, rtol=1e-12, atol=1e-9)
    x32 = x.float()
    torch.testing.assert_close(linear_gram(x32, chunk_elements=4096).double(), full, rtol=1e-5, atol=1e-2)
