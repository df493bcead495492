"""A kernel registered in vvm.cka.kernels works everywhere CKA takes a kernel: the one-call cka() and the
streaming pass, both against an independent numpy reference (issue 17's "how to add a kernel"); a kernel's
options are its ``Params``, reached as ``kernel_params`` by every engine class (issue 26), and the old
``rbf_frac=``/``rbf_bandwidth=`` keywords still work for one release with a FutureWarning."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import reference as ref
import torch
from helpers import Replay, make_layer_batches

from vvm.cka import (
    KERNELS,
    JointCKA,
    JointSimilarity,
    StreamingCKA,
    StreamingSimilarity,
    cka,
    gram,
    make_kernel,
)
from vvm.cka.kernels import Kernel, register_kernel
from vvm.cka.params import option


class CosineKernel(Kernel):
    """``K_ij = ⟨xc_i, xc_j⟩ / (‖xc_i‖ ‖xc_j‖)``: the linear Gram normalised to a unit diagonal."""

    name = "test_cosine"

    def __call__(self, side, linear):
        d = linear.diagonal(dim1=-2, dim2=-1).sqrt()
        return linear / (d[..., :, None] * d[..., None, :])


@pytest.fixture
def cosine_kernel():
    register_kernel(CosineKernel)
    try:
        yield CosineKernel.name
    finally:
        del KERNELS[CosineKernel.name]


def cosine_reference(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0)
    xn = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    return xn @ xn.T


def test_a_registered_kernel_works_in_cka_and_in_the_pass(cosine_kernel):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 7)), rng.normal(size=(40, 5)) + rng.normal(size=(40, 1))
    want = ref.hsic_unbiased(cosine_reference(x), cosine_reference(y)) / np.sqrt(
        ref.hsic_unbiased(cosine_reference(x), cosine_reference(x))
        * ref.hsic_unbiased(cosine_reference(y), cosine_reference(y))
    )
    got = cka(torch.from_numpy(x), torch.from_numpy(y), kernel=cosine_kernel)
    assert got == pytest.approx(want, abs=1e-12)
    # the linear kernel gives another value: the kernel was used, not ignored
    assert abs(cka(torch.from_numpy(x), torch.from_numpy(y)) - want) > 1e-3

    batches = make_layer_batches([24, 24], [6, 9], seed=3, dtype=torch.float64)
    model = Replay(2)
    m = StreamingCKA(model, "blocks", kernel=cosine_kernel)
    with m.track():
        for feats in batches:
            model(feats)
    res = m.compute()
    # the pass's CKA is the batch-size-weighted ratio of mean HSICs: rebuild it from the reference kernels
    hx = [[ref.hsic_unbiased(cosine_reference(b[i].numpy()), cosine_reference(b[j].numpy())) for b in batches]
          for i in range(2) for j in range(2)]  # fmt: skip
    mean = np.array([np.mean(h) for h in hx]).reshape(2, 2)
    np.testing.assert_allclose(res.matrix.numpy(), mean / np.sqrt(np.outer(mean.diagonal(), mean.diagonal())),
                               atol=1e-10, rtol=0)  # fmt: skip


def test_kernel_names_are_checked(cosine_kernel):
    with pytest.raises(ValueError, match="needs a name that is not taken"):
        register_kernel(CosineKernel)
    with pytest.raises(ValueError, match="kernel='nope' is not supported: use one of ") as e:
        cka(torch.randn(5, 3), torch.randn(5, 3), kernel="nope")
    # every registered kernel is offered (adding one does not edit this test)
    assert {"linear", "rbf", "test_cosine"} <= set(str(e.value).split("use one of ")[1].split(", "))


class ScaledPolyKernel(Kernel):
    """``K = (Xc Xcᵀ / d̄ + 1)^degree`` (``d̄``: the mean of the Gram's diagonal, so that the scale of the features
    does not matter): a kernel with an option, declared as its ``Params``, nothing else."""

    @dataclass(frozen=True)
    class Params:
        degree: int = option(2, minimum=1, why="the polynomial's degree")

    name = "test_poly"

    def __call__(self, side, linear):
        scale = linear.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
        return (linear / scale + 1) ** self.params.degree


def poly_reference(x: np.ndarray, degree: int) -> np.ndarray:
    xc = x - x.mean(0)
    k = xc @ xc.T
    return (k / np.mean(np.diag(k)) + 1) ** degree


@pytest.fixture
def poly_kernel():
    register_kernel(ScaledPolyKernel)
    try:
        yield ScaledPolyKernel.name
    finally:
        del KERNELS[ScaledPolyKernel.name]


def ref_cka(kx: np.ndarray, ky: np.ndarray) -> float:
    return ref.hsic_unbiased(kx, ky) / np.sqrt(ref.hsic_unbiased(kx, kx) * ref.hsic_unbiased(ky, ky))


def test_a_kernel_with_an_option_reaches_every_engine_class_through_kernel_params(poly_kernel):
    """The option of a kernel registered in the test (2 things: its class, its Params) is taken by cka() and by
    the four pass classes as kernel_params, and each agrees with numpy."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 4)) + rng.normal(size=(30, 1))
    for degree in (1, 3):
        want = ref_cka(poly_reference(x, degree), poly_reference(y, degree))
        got = cka(
            torch.from_numpy(x), torch.from_numpy(y), kernel=poly_kernel, kernel_params={"degree": degree}
        )
        assert got == pytest.approx(want, abs=1e-12)
    assert cka(x, y, kernel=poly_kernel, kernel_params={"degree": 3}) != pytest.approx(
        cka(x, y, kernel=poly_kernel), abs=1e-4
    )  # the option was used, not ignored

    batches = make_layer_batches([20], [6, 4], seed=5, dtype=torch.float64)
    feats = [f.numpy() for f in batches[0]]
    want = np.array([[ref_cka(poly_reference(a, 3), poly_reference(b, 3)) for b in feats] for a in feats])
    options = {"kernel": poly_kernel, "kernel_params": {"degree": 3}}
    model = Replay(2)
    for m in (StreamingCKA(model, "blocks", **options), StreamingSimilarity(model, "blocks", **options)):
        with m.track():
            model(batches[0])
        res = m.compute()
        res = res["cka"] if isinstance(res, dict) else res
        np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-10, rtol=0)
    models = {"a": Replay(2), "b": Replay(2)}
    for m in (JointCKA(models, "blocks", **options), JointSimilarity(models, "blocks", **options)):
        with m.track():
            m.feed(batches[0])
        res = m.compute()
        res = res["cka"] if isinstance(res, dict) else res
        np.testing.assert_allclose(res.block("a", "b").numpy(), want, atol=1e-10, rtol=0)


def test_kernel_params_are_checked_by_name_and_range(poly_kernel):
    with pytest.raises(
        ValueError, match=r"kernel 'test_poly' has no parameter frac \(its parameters: degree\)"
    ):
        cka(torch.randn(8, 3), torch.randn(8, 3), kernel=poly_kernel, kernel_params={"frac": 2})
    with pytest.raises(ValueError, match=r"kernel.test_poly.degree=0 must be >= 1"):
        StreamingCKA(Replay(2), "blocks", kernel=poly_kernel, kernel_params={"degree": 0})
    with pytest.raises(
        ValueError, match=r"kernel.rbf.bandwidth='sometimes' is not supported: use one of fixed"
    ):
        make_kernel("rbf", {"bandwidth": "sometimes"})
    with pytest.raises(ValueError, match=r"kernel 'linear' has no parameter frac"):
        JointCKA({"a": Replay(2)}, "blocks", kernel_params={"frac": 0.5})
    with pytest.raises(TypeError, match=r"unexpected keyword argument rbf_fraction="):
        cka(torch.randn(8, 3), torch.randn(8, 3), kernel="rbf", rbf_fraction=0.5)
    assert make_kernel("rbf", {"frac": 0.5}).describe() == {"frac": 0.5, "bandwidth": "fixed"}


def test_rbf_keywords_still_work_for_one_release_with_a_future_warning():
    """rbf_frac=/rbf_bandwidth= give the numbers kernel_params gives, with a FutureWarning naming
    kernel_params, pointing at the caller's line; given with another kernel they had no effect and have none."""
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randn(24, 3, dtype=torch.float64)
    with pytest.warns(FutureWarning, match=r"rbf_frac= is deprecated .* kernel_params=\{'frac': 0.4\}") as w:
        old = cka(x, y, kernel="rbf", rbf_frac=0.4)
    assert w[0].filename == __file__
    assert old == cka(x, y, kernel="rbf", kernel_params={"frac": 0.4})
    with pytest.warns(FutureWarning, match="rbf_frac="):
        assert torch.equal(gram(x, "rbf", rbf_frac=0.4), gram(x, "rbf", kernel_params={"frac": 0.4}))

    batches = make_layer_batches([16, 16], [5, 4], seed=2, dtype=torch.float64)
    new_kw = {"kernel": "rbf", "kernel_params": {"frac": 0.7, "bandwidth": "per_batch"}}
    old_kw = {"kernel": "rbf", "rbf_frac": 0.7, "rbf_bandwidth": "per_batch"}
    model = Replay(2)
    results = []
    for make in (StreamingCKA, lambda *a, **k: StreamingSimilarity(*a, **k)):
        for kw in (new_kw, old_kw):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                m = make(model, "blocks", **kw)
            assert [str(x.message)[:35] for x in w if x.category is FutureWarning] == (
                ["rbf_frac=, rbf_bandwidth= is deprec"] if kw is old_kw else []
            )
            with m.track():
                for feats in batches:
                    model(feats)
            res = m.compute()
            results.append(res["cka"] if isinstance(res, dict) else res)
    for res in results[1:]:
        assert torch.equal(res.matrix, results[0].matrix) and res.rbf_bandwidth == "per_batch"
    with pytest.warns(FutureWarning, match=r"\(no effect with kernel='linear'\)"):
        JointCKA({"a": Replay(2)}, "blocks", rbf_frac=0.5)
    with pytest.raises(ValueError, match="frac given twice"), pytest.warns(FutureWarning):
        StreamingCKA(model, "blocks", kernel="rbf", kernel_params={"frac": 0.5}, rbf_frac=0.5)


class _Plan:
    """A batch plan as vvm.data.batches.EvalBatches answers: this rank's i-th batch is global batch 2i + 1, and
    its third one is padding."""

    def batch_info(self, i):
        return 2 * i + 1, i == 2


def test_begin_batch_files_each_batch_under_its_global_id_and_masks_padding():
    batches = make_layer_batches([12, 12, 12], [4, 3], seed=4, dtype=torch.float64)
    model = Replay(2)
    m = StreamingCKA(model, "blocks", max_batches=6)
    with m.track():
        for i, feats in enumerate(batches):
            m.begin_batch(i, _Plan())
            model(feats)
    res = m.compute()
    assert res.batch_ids.tolist() == [1, 3] and res.n_samples == 24  # batch 5 was padding: nothing added
    np.testing.assert_allclose(res.matrix.numpy(), ref.minibatch_cka(batches[:2], batches[:2]), atol=1e-10)
