"""The Python API fails well: numpy inputs work, scalars are errors, non-finite features make an undefined row
with a warning that says which layer and batch, a nested track() is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Replay, make_layer_batches
from torch import nn

from vvm.cka import StreamingCKA, cka


def test_numpy_inputs_are_accepted():
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6))
    y = x @ g.normal(size=(6, 3)) + 0.1 * g.normal(size=(40, 3))
    assert cka(x, y) == pytest.approx(cka(torch.from_numpy(x), torch.from_numpy(y)), abs=1e-12)
    assert cka(x.tolist(), y) == pytest.approx(cka(x, y), abs=1e-12)


def test_scalars_are_an_error_that_says_so():
    with pytest.raises(ValueError, match="0-d"):
        cka(torch.tensor(1.0), torch.randn(5, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e200])
def test_non_finite_inputs_to_cka_are_an_error(bad):
    x = torch.randn(20, 4, dtype=torch.float64)
    x[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        cka(x, torch.randn(20, 3, dtype=torch.float64))


class _DictOut(nn.Module):
    """A layer whose output is a dict whose first value is a 0-d loss."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 7)

    def forward(self, x):
        return {"loss": x.sum(), "features": self.lin(x)}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = _DictOut()
        self.out = nn.Linear(7, 2)

    def forward(self, x):
        return self.out(self.head(x)["features"])


def test_dict_output_with_a_scalar_first_uses_the_batch_first_tensor():
    net = _Net()
    m = StreamingCKA(net, ["head", "out"])
    with m.track(), torch.no_grad():
        for _ in range(2):
            net(torch.randn(16, 5))
    res = m.compute()
    assert res.n_samples == 32 and np.isfinite(res.matrix.numpy()).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e200])
def test_non_finite_features_make_an_undefined_row_naming_the_layer_and_batch(bad):
    """Not a failed pass (issue 30): the layer's row and column are NaN, with one warning naming it and the
    batch; the other layers' CKA is what it is without it."""
    batches = make_layer_batches([16, 16, 16], [5, 6, 4], seed=0, dtype=torch.float64)
    clean = StreamingCKA(Replay(3), "blocks")
    with clean.track():
        for feats in batches:
            clean.recorder.models["x"](feats)
    batches[2][1][4, 2] = bad
    model = Replay(3)
    m = StreamingCKA(model, "blocks")
    with pytest.warns(UserWarning, match=r"layer 'l1' \(batch 2\) has non-finite features") as w, m.track():
        for feats in batches:
            model(feats)
    res = m.compute()
    assert sum("non-finite features" in str(x.message) for x in w) == 1  # once, though compute() looks again
    got, want = res.matrix.numpy(), clean.compute().matrix.numpy()
    assert np.isnan(got[1, :]).all() and np.isnan(got[:, 1]).all() and np.isnan(res.stderr.numpy()[1]).all()
    keep = [0, 2]
    np.testing.assert_allclose(got[np.ix_(keep, keep)], want[np.ix_(keep, keep)], atol=1e-12)


def test_nested_track_is_refused():
    model = Replay(2)
    m = StreamingCKA(model, "blocks")
    with m.track():
        with pytest.raises(RuntimeError, match="already active"), m.track():
            pass
    # the outer block's hooks are gone, and the metric works again afterwards
    assert not any(mod._forward_hooks for mod in model.modules())
    batches = make_layer_batches([8, 8], [3, 4], seed=1)
    with m.track():
        for feats in batches:
            model(feats)
    assert m.compute().n_batches == 2
