"""RSA and mutual kNN against independent float64 references (scipy, scikit-learn, brute force), single batch and
streamed; their invariances; CKA's numbers unchanged when they ride along; the joint pass per measure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference_measures as ref
import torch
from helpers import Replay, make_layer_batches
from scipy.stats import rankdata

from vvm.cka import JointSimilarity, StreamingCKA, StreamingSimilarity
from vvm.cka.measures.knn import neighbour_indicator
from vvm.cka.measures.rsa import average_ranks

DIMS = [6, 50, 3, 20]


def run(batches, n_layers=None, measures=("rsa", "knn"), params=None, **kw):
    model = Replay(n_layers or len(batches[0]))
    m = StreamingSimilarity(model, "blocks", measures=measures, params=params, max_batches=len(batches), **kw)
    with m.track():
        for feats in batches:
            model(feats)
    return m.compute()


def reference(batches, fn):
    values, sizes = ref.per_batch(batches, batches, fn)
    return ref.weighted_mean(values, sizes)


# ---------------------------------------------------------------------------------------------- the references
@pytest.mark.parametrize(
    "correlation, distance",
    [("spearman", d) for d in ("correlation", "euclidean", "sqeuclidean")]
    + [(c, "correlation") for c in ("pearson", "rho-a", "tau-a")],
)
def test_rsa_single_batch_matches_scipy_and_rsatoolbox(correlation, distance):
    """Every distance (scipy's pdist) with every comparator (scipy; rsatoolbox's rho-a and tau-a)."""
    batches = make_layer_batches([40], [4, 200, 7, 60], seed=1, dtype=torch.float64)  # d << n and d >> n
    params = {"correlation": correlation, "distance": distance}
    res = run(batches, measures=["rsa"], params={"rsa": params})["rsa"]
    want, _ = reference(batches, lambda x, y: ref.rsa(x, y, correlation, distance))
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-9, rtol=0)
    assert res.n_batches == 1 and np.isnan(res.stderr.numpy()[~np.eye(4, dtype=bool)]).all()  # no spread
    assert res.params == {**params, "n": 1024} and res.facts["pool_size"] == 40


def test_rsa_comparators_for_tied_rdms_match_rsatoolbox_on_ties():
    """Integer features: many tied distances, where rho-a and tau-a differ from Spearman and tau-b."""
    g = torch.Generator().manual_seed(13)
    batches = [[torch.randint(-2, 3, (16, d), generator=g).double() for d in (2, 3, 4)]]
    for correlation in ("rho-a", "tau-a"):
        params = {"rsa": {"correlation": correlation, "distance": "sqeuclidean"}}
        res = run(batches, measures=["rsa"], params=params)["rsa"]
        want, _ = reference(batches, lambda x, y, c=correlation: ref.rsa(x, y, c, "sqeuclidean"))
        np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-12, rtol=0)
        assert (np.diag(res.matrix.numpy()) < 1).all()  # ties: an RDM's own rho-a / tau-a is below 1


@pytest.mark.parametrize("correlation", ["spearman", "pearson"])
def test_rsa_streamed_unequal_batches_match_the_weighted_mean(correlation):
    batches = make_layer_batches([32, 32, 24, 13], DIMS, seed=2, dtype=torch.float64)
    params = {"rsa": {"correlation": correlation, "distance": "sqeuclidean"}}
    res = run(batches, measures=["rsa"], params=params)["rsa"]
    want, se = reference(batches, lambda x, y: ref.rsa(x, y, correlation, "sqeuclidean"))
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-9, rtol=0)
    off = ~np.eye(len(DIMS), dtype=bool)
    np.testing.assert_allclose(res.stderr.numpy()[off], se[off], atol=1e-9, rtol=0)
    np.testing.assert_array_equal(np.diag(res.stderr.numpy()), 0.0)
    assert res.n_samples == 101 and res.n_batches == 4


def test_knn_single_batch_and_streamed_match_scikit_learn():
    dims = [6, 50, 2, 20]
    batches = make_layer_batches([32, 32, 24, 13], dims, seed=3, dtype=torch.float64)
    res = run(batches, measures=["knn"], params={"knn": {"k": 5}})["knn"]
    want, se = reference(batches, lambda x, y: ref.knn(x, y, 5))
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-9, rtol=0)
    off = ~np.eye(len(dims), dtype=bool)
    np.testing.assert_allclose(res.stderr.numpy()[off], se[off], atol=1e-9, rtol=0)
    one = run(batches[:1], measures=["knn"], params={"knn": {"k": 10}})["knn"]
    want1, _ = reference(batches[:1], lambda x, y: ref.knn(x, y, 10))
    np.testing.assert_allclose(one.matrix.numpy(), want1, atol=1e-9, rtol=0)
    assert one.params == {"k": 10, "n": 1024}
    assert one.facts == {"pool_size": 32, "chance": 10 / 31}


def test_knn_ties_go_to_the_smaller_index():
    """Duplicated examples tie exactly; an all-zero example is similar to nothing: the brute-force reference
    with a stable sort (ties to the smaller index) agrees."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(12, 5, generator=g, dtype=torch.float64)
    other = base @ torch.randn(5, 9, generator=g, dtype=torch.float64) + torch.randn(
        12, 9, generator=g, dtype=torch.float64
    )
    dup = [3, 7, 3, 0]  # examples 12..15 repeat examples 3, 7, 3, 0 in both layers
    x = torch.cat([base, base[dup], torch.zeros(1, 5, dtype=torch.float64)])  # example 16: all zero in x
    y = torch.cat([other, other[dup], torch.randn(1, 9, generator=g, dtype=torch.float64)])
    with pytest.warns(
        UserWarning, match=r"knn: examples whose features are all zero were left out in layers l0 \(1\)"
    ):
        res = run([[x, y]], measures=["knn"], params={"knn": {"k": 4}})["knn"]
    assert res.excluded_x.tolist() == [1, 0]
    for (i, a), (j, b) in [((0, x), (1, y)), ((0, x), (0, x)), ((1, y), (1, y))]:
        want = ref.knn(a, b, 4, neighbours=ref.neighbours_bruteforce)
        assert res.matrix[i, j].item() == pytest.approx(want, abs=1e-12)
    s = torch.zeros(1, 3, 3, dtype=torch.float64)  # every similarity tied: the smallest indices win
    np.testing.assert_array_equal(neighbour_indicator(s, 1)[0].numpy(), [[0, 1, 0], [1, 0, 0], [1, 0, 0]])


def test_rsa_ties_use_average_ranks():
    """Small integer features with a power-of-two batch: every distance is exact, many tie, and the ranks are
    scipy's average ranks."""
    g = torch.Generator().manual_seed(5)
    batches = [[torch.randint(-2, 3, (16, d), generator=g).double() for d in (2, 3, 1)] for _ in range(2)]
    res = run(batches, measures=["rsa"], params={"rsa": {"distance": "sqeuclidean"}})["rsa"]
    want, _ = reference(batches, lambda x, y: ref.rsa(x, y, "spearman", "sqeuclidean"))
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-12, rtol=0)
    v = torch.randint(0, 6, (3, 40), generator=g).double()
    np.testing.assert_array_equal(average_ranks(v).numpy(), rankdata(v.numpy(), axis=-1))


# ---------------------------------------------------------------------------------------------- properties
def test_identical_layers_give_one():
    batches = make_layer_batches([30, 30], DIMS, seed=6, dtype=torch.float64)
    res = run(batches)
    for name in ("rsa", "knn"):
        np.testing.assert_array_equal(np.diag(res[name].matrix.numpy()), 1.0)
        np.testing.assert_allclose(res[name].matrix.numpy(), res[name].matrix.numpy().T, atol=1e-12)
    twin = run([feats + [feats[1].clone()] for feats in batches])  # a second copy of layer 1
    for name in ("rsa", "knn"):
        assert twin[name].matrix[1, 4].item() == pytest.approx(1.0, abs=1e-12)


def test_rsa_is_unchanged_by_scaling_a_layer_and_knn_by_scaling_an_example():
    batches = make_layer_batches([30, 26], DIMS, seed=7, dtype=torch.float64)
    base = run(batches)
    scaled = [[3 * f if i == 1 else f for i, f in enumerate(feats)] for feats in batches]  # layer 1: x -> 3x
    np.testing.assert_allclose(run(scaled)["rsa"].matrix.numpy(), base["rsa"].matrix.numpy(), atol=1e-12)
    one = [[f.clone() for f in feats] for feats in batches]
    for feats in one:
        feats[2][5] *= 7.5  # example 5's features in layer 2, by a positive constant
        feats[0][0] *= 0.01
    np.testing.assert_allclose(run(one)["knn"].matrix.numpy(), base["knn"].matrix.numpy(), atol=1e-12)
    # and not by something that moves the neighbours: the test can fail
    moved = [[f.clone() for f in feats] for feats in batches]
    for feats in moved:
        feats[2][5] = -feats[2][5]
    assert not np.allclose(run(moved)["knn"].matrix.numpy(), base["knn"].matrix.numpy(), atol=1e-6)


def test_a_constant_layer_is_undefined_with_a_warning_naming_it():
    batches = make_layer_batches([20, 20], [4, 5, 6], seed=8, dtype=torch.float64)
    for feats in batches:
        feats[1] = torch.full_like(feats[1], 3.0)
    with pytest.warns(UserWarning, match=r"undefined \(NaN\) for layers .*: l1"):
        res = run(batches, measures=["cka", "rsa", "knn"])
    for name in ("cka", "rsa", "knn"):
        m = res[name].matrix.numpy()
        assert np.isnan(m[1]).all() and np.isnan(m[:, 1]).all(), name
        assert np.isfinite(m[np.ix_([0, 2], [0, 2])]).all(), name
        assert res[name].undefined_x == ["l1"]


def test_a_batch_too_small_for_k_is_skipped_with_a_warning():
    batches = make_layer_batches([24, 8], [4, 5], seed=9, dtype=torch.float64)
    with pytest.warns(UserWarning, match="knn: skipped a batch of 8 examples: knn with k=10"):
        res = run(batches, measures=["cka", "knn"])
    assert res["knn"].n_batches == 1 and res["cka"].n_batches == 2


# ---------------------------------------------------------------------------------------------- CKA unchanged
@pytest.mark.parametrize("options", [{}, {"kernel": "rbf"}, {"estimator": "biased", "precision": "fast"}])
def test_cka_is_the_same_with_the_other_measures_riding_along(options):
    batches = make_layer_batches([32, 32, 17], DIMS, seed=10)
    model = Replay(len(DIMS))
    alone = StreamingCKA(model, "blocks", max_batches=3, **options)
    with alone.track():
        for feats in batches:
            model(feats)
    want = alone.compute()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no measure warns on ordinary data
        got = run(batches, measures=["rsa", "cka", "knn"], **options)
    assert list(got) == ["rsa", "cka", "knn"]
    for key in ("matrix", "stderr", "batch_hsic_xy", "hsic_xx"):
        np.testing.assert_array_equal(getattr(got["cka"], key).numpy(), getattr(want, key).numpy())


def test_two_models_rectangular():
    # ReLU layers wide enough that no two examples are collinear (an exact tie the two computations would round
    # differently); ties are tested on their own above
    batches = make_layer_batches([30, 30], [5, 16, 7, 18, 9], seed=11, dtype=torch.float64)
    mx, my = Replay(2), Replay(3)
    m = StreamingSimilarity(mx, "blocks", other=my, measures=["rsa", "knn"], params={"knn": {"k": 6}})
    with m.track():
        for feats in batches:
            mx(feats[:2])
            my(feats[2:])
    res = m.compute()
    bx, by = [f[:2] for f in batches], [f[2:] for f in batches]
    for name, fn in (("rsa", ref.rsa), ("knn", lambda a, b: ref.knn(a, b, 6))):
        values, sizes = ref.per_batch(bx, by, fn)
        want, se = ref.weighted_mean(values, sizes)
        assert res[name].matrix.shape == (2, 3)
        np.testing.assert_allclose(res[name].matrix.numpy(), want, atol=1e-9)
        np.testing.assert_allclose(res[name].stderr.numpy(), se, atol=1e-9)


def test_joint_blocks_equal_the_pairwise_runs():
    g = torch.Generator().manual_seed(12)
    batches = make_layer_batches([24, 24, 20], [5, 7, 4, 9, 6], seed=12, dtype=torch.float64)
    feats = {"a": [b[:2] for b in batches], "b": [[f + 0.1 * torch.randn(f.shape, generator=g, dtype=f.dtype) for f in b[2:]] for b in batches]}  # fmt: skip
    models = {"a": Replay(2), "b": Replay(3)}
    joint = JointSimilarity(models, "blocks", measures=["cka", "rsa", "knn"], max_batches=3)
    with joint.track():
        for i in range(3):
            for k in models:
                models[k](feats[k][i])
    res = joint.compute()
    pair = StreamingSimilarity(
        Replay(2), "blocks", other=Replay(3), measures=["cka", "rsa", "knn"], max_batches=3
    )
    with pair.track():
        for i in range(3):
            pair._pass.recorder.models["x"](feats["a"][i])
            pair._pass.recorder.models["y"](feats["b"][i])
    want = pair.compute()
    for name in ("cka", "rsa", "knn"):
        assert res[name].models == ["a", "b"] and res[name].layers_of("b") == ["l0", "l1", "l2"]
        np.testing.assert_allclose(res[name].block("a", "b").numpy(), want[name].matrix.numpy(), atol=1e-12)
        np.testing.assert_allclose(
            res[name].block("a", "b", "stderr").numpy(), want[name].stderr.numpy(), atol=1e-12
        )


def test_unknown_measures_and_parameters_are_refused():
    with pytest.raises(ValueError, match="measure 'cca2' is not known: use one of cca, cka, .*rsa"):
        StreamingSimilarity(Replay(2), measures=["cka", "cca2"])
    with pytest.raises(
        ValueError, match="rsa.correlation='kendall' is not supported: use one of spearman, pearson, rho-a"
    ):
        StreamingSimilarity(Replay(2), measures=["rsa"], params={"rsa": {"correlation": "kendall"}})
    with pytest.raises(ValueError, match="knn.k=0 must be >= 1"):
        StreamingSimilarity(Replay(2), measures=["knn"], params={"knn": {"k": 0}})
    with pytest.raises(ValueError, match="name each measure once"):
        StreamingSimilarity(Replay(2), measures=["rsa", "rsa"])
