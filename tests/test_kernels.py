"""A kernel registered in vvm.cka.kernels works everywhere CKA takes a kernel: the one-call cka() and the
streaming pass, both against an independent numpy reference (issue 17's "how to add a kernel")."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
from helpers import Replay, make_layer_batches

from vvm.cka import KERNELS, StreamingCKA, cka
from vvm.cka.kernels import Kernel, register_kernel


class CosineKernel(Kernel):
    """``K_ij = ⟨xc_i, xc_j⟩ / (‖xc_i‖ ‖xc_j‖)``: the linear Gram normalised to a unit diagonal."""

    name = "test_cosine"

    def __init__(self, **_):
        pass

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
    with pytest.raises(
        ValueError, match="kernel='poly' is not supported: use one of linear, rbf, test_cosine"
    ):
        cka(torch.randn(5, 3), torch.randn(5, 3), kernel="poly")
