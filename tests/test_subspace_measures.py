"""CCA, SVCCA, PWCCA, linear regression and Procrustes against independent float64 references (numpy/scipy from
the papers' definitions, tests/reference_subspace.py), on one pool and streamed over pools; the closed forms that
pin them down (invariances, wide layers); a wrong measure failing the invariance test; the joint pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_measures as refm
import reference_subspace as ref
import torch
from helpers import Replay

from vvm.cka import JointSimilarity, StreamingSimilarity

NAMES = ("cca", "svcca", "pwcca", "linreg", "procrustes")
REFS = {
    "cca": ref.cca,
    "svcca": ref.svcca,
    "pwcca": ref.pwcca,
    "linreg": ref.linreg,
    "procrustes": ref.procrustes,
}


def latent_layers(n, dims, seed=0, noise=0.5):
    """Layers of ``n`` examples that share a 4-d latent (float64)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return [
        z @ torch.randn(4, d, generator=g, dtype=torch.float64) + noise * torch.randn(n, d, generator=g,
                                                                                     dtype=torch.float64)
        for d in dims
    ]  # fmt: skip


def run(pools, measures=NAMES, params=None):
    """One pass, every forward batch a pool (no plan); ``pools`` a list of per-layer feature lists."""
    model = Replay(len(pools[0]))
    m = StreamingSimilarity(model, "blocks", measures=list(measures), params=params, max_batches=len(pools))
    with m.track():
        for feats in pools:
            model(feats)
    return m.compute()


def pair(name, x, y, **params):
    """The measure of two representations of the same examples, in one pool."""
    res = run([[x, y]], measures=[name], params={name: params} if params else None)[name]
    return float(res.matrix[0, 1])


# ---------------------------------------------------------------------------------------------- the references
def test_one_pool_matches_the_references():
    """(r_x + r_y < n - 1 for every pair: no canonical correlation is 1 by dimension count, where PWCCA's weights
    would depend on the basis chosen within the tied directions.)"""
    feats = latent_layers(64, [5, 12, 20, 31])
    res = run([feats])
    for name in NAMES:
        want = np.array([[REFS[name](a, b) for b in feats] for a in feats])
        np.testing.assert_allclose(res[name].matrix.numpy(), want, rtol=0, atol=1e-8, err_msg=name)
        assert res[name].facts["pool_size"] == 64 and res[name].n_batches == 1


def test_the_other_statistics_match_the_references():
    """cca's R²_CCA, svcca cut at 0.9 of the variance (fewer directions than the rank), procrustes' angle."""
    feats = latent_layers(40, [6, 15, 24], seed=1)
    params = {"cca": {"statistic": "r2"}, "svcca": {"keep": 0.9}, "procrustes": {"statistic": "angle"}}
    res = run([feats], measures=list(params), params=params)
    fns = {
        "cca": lambda a, b: ref.cca(a, b, "r2"),
        "svcca": lambda a, b: ref.svcca(a, b, 0.9),
        "procrustes": lambda a, b: math.acos(min(1.0, ref.procrustes(a, b))),
    }
    for name, fn in fns.items():
        want = np.array([[fn(a, b) for b in feats] for a in feats])
        atol = 1e-7 if name == "procrustes" else 1e-8  # arccos near 1 amplifies rounding
        np.testing.assert_allclose(res[name].matrix.numpy(), want, rtol=0, atol=atol, err_msg=name)
    assert ref.svd_reduce(feats[2], 0.9).shape[1] < 24  # the cut drops directions here


def test_canonical_correlations_are_the_cosines_of_the_principal_angles():
    """Two references of CCA agree (whitening vs scipy's subspace angles), and vvm with both."""
    x, y = latent_layers(40, [7, 9], seed=2)
    rho = np.clip(ref.cca_svd(x, y)[0], 0, 1)
    np.testing.assert_allclose(rho, ref.cca_angles(x, y), atol=1e-10)
    assert pair("cca", x, y) == pytest.approx(rho.mean(), abs=1e-10)


def test_pools_are_averaged_with_a_standard_error():
    """Three pools of unequal size: the size-weighted mean and its standard error, as for RSA and kNN."""
    pools = [latent_layers(n, [4, 10, 18], seed=s) for n, s in ((40, 0), (55, 1), (33, 2))]
    res = run(pools)
    for name in NAMES:
        values, sizes = refm.per_batch(pools, pools, REFS[name])
        mean, se = refm.weighted_mean(values, sizes)
        np.testing.assert_allclose(res[name].matrix.numpy(), mean, atol=1e-8)
        off = ~np.eye(3, dtype=bool)
        np.testing.assert_allclose(res[name].stderr.numpy()[off], se[off], atol=1e-8)
        assert res[name].n_batches == 3


# ---------------------------------------------------------------------------------------------- closed forms
def test_an_invertible_map_leaves_cca_and_untruncated_svcca_at_one():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64) + 3 * torch.eye(8, dtype=torch.float64)
    y = x @ a + 5.0  # invertible linear map and a shift
    assert pair("cca", x, y) == pytest.approx(1.0, abs=1e-10)
    assert pair("cca", x, y, statistic="r2") == pytest.approx(1.0, abs=1e-10)
    assert pair("svcca", x, y, keep=1.0) == pytest.approx(1.0, abs=1e-10)
    assert pair("pwcca", x, y) == pytest.approx(1.0, abs=1e-10)
    assert pair("linreg", x, y) == pytest.approx(1.0, abs=1e-10)
    assert pair("procrustes", x, y) < 0.99  # not orthogonal: Procrustes sees it


def orthogonal_check(similarity, x, seed=4):
    """The invariance an orthogonal-Procrustes similarity must have: an orthogonal map, an isotropic scaling
    and a shift of the representation leave it at 1."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64))[0]
    y = 2.5 * x @ q + torch.randn(x.shape[1], generator=g, dtype=torch.float64)
    assert similarity(x, y) == pytest.approx(1.0, abs=1e-10)


def test_procrustes_is_one_under_an_orthogonal_map_and_a_wrong_one_fails_the_check():
    x = latent_layers(40, [6], seed=5)[0] + 3.0  # a mean offset: what centring is for
    orthogonal_check(lambda a, b: pair("procrustes", a, b), x)
    orthogonal_check(ref.procrustes, x)
    with pytest.raises(AssertionError):  # the same index without centring is no Procrustes similarity
        orthogonal_check(lambda a, b: ref.procrustes(a, b, centre=False), x)
    g = torch.Generator().manual_seed(6)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert pair("procrustes", x, x @ a) < 0.99  # a non-orthogonal map is not 1


def test_more_features_than_examples_give_one_for_unrelated_layers():
    """d >= n: every centred representation has rank n - 1, so the CCA family (and regression) cannot tell two
    unrelated layers apart (Kornblith et al. 2019); Procrustes and CKA can."""
    g = torch.Generator().manual_seed(7)
    x, y = (torch.randn(30, d, generator=g, dtype=torch.float64) for d in (40, 64))
    res = run([[x, y]], measures=["cka", *NAMES], params={"svcca": {"keep": 1.0}})
    for name in ("cca", "svcca", "pwcca", "linreg"):
        assert float(res[name].matrix[0, 1]) == pytest.approx(1.0, abs=1e-10), name
    assert float(res["procrustes"].matrix[0, 1]) < 0.9 and abs(float(res["cka"].matrix[0, 1])) < 0.5
    assert pair("svcca", x, y) < 1.0  # the 99% cut drops directions: below 1


def test_a_constant_layer_is_undefined():
    x, y = latent_layers(20, [4, 5])
    with pytest.warns(UserWarning, match="undefined"):
        res = run([[x, y, torch.ones(20, 3, dtype=torch.float64)]], measures=["cca"])["cca"]
    assert torch.isnan(res.matrix[2]).all() and torch.isfinite(res.matrix[:2, :2]).all()


def test_float32_activations_give_float64_grams_in_the_exact_mode():
    """The rank of a narrow float32 layer is its width: the Grams are computed in float64 (no float32 rounding
    noise in the null space), so CCA of a layer with an invertible map of itself is 1."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(200, 16, generator=g)
    y = x @ (torch.randn(16, 16, generator=g) + 4 * torch.eye(16))
    assert pair("cca", x, y) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------- joint pass
def test_joint_blocks_equal_the_pairwise_runs():
    a, b = Replay(2), Replay(3)
    fa, fb = latent_layers(36, [5, 9], seed=9), latent_layers(36, [4, 7, 11], seed=9)
    m = JointSimilarity({"a": a, "b": b}, "blocks", measures=list(NAMES), max_batches=1)
    with m.track():
        a(fa)
        b(fb)
    res = m.compute()
    for name in NAMES:
        want = np.array([[REFS[name](x, y) for y in fb] for x in fa])
        np.testing.assert_allclose(res[name].block("a", "b").numpy(), want, atol=1e-8)
