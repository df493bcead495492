"""StreamingCKA: hooks + accumulation against the float64 reference, and its error handling."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import reference as ref
import torch
from helpers import Replay, Twice, make_layer_batches

from vvm.cka import StreamingCKA, resolve_layers
from vvm.models import create


def run_stream(batches, n_layers, **kw):
    model = Replay(n_layers)
    m = StreamingCKA(model, "blocks", **kw)
    with m.track():
        for feats in batches:
            model(feats)
    return m.compute()


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_many_batches_unequal_last_batch(kernel, estimator):
    dims = [7, 300, 1, 40]
    batches = make_layer_batches([32, 32, 32, 13], dims, seed=1, dtype=torch.float64)
    res = run_stream(batches, len(dims), kernel=kernel, estimator=estimator)
    want = ref.minibatch_cka(batches, batches, kind=kernel, estimator=estimator)
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-10, rtol=0)
    assert res.n_samples == 32 * 3 + 13 and res.n_batches == 4
    assert res.layers_x == res.layers_y == ["l0", "l1", "l2", "l3"]
    assert res.matrix.dtype == torch.float64


def test_single_batch_n4():
    batches = make_layer_batches([4], [3, 5, 2], seed=2, dtype=torch.float64)
    res = run_stream(batches, 3)
    np.testing.assert_allclose(res.matrix.numpy(), ref.minibatch_cka(batches, batches), atol=1e-10)


def test_symmetric_with_unit_diagonal_and_invariances():
    batches = make_layer_batches([40, 40], [10, 12, 9], seed=3)
    res = run_stream(batches, 3)
    m = res.matrix.numpy()
    np.testing.assert_array_equal(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    # layer 0 rotated by an orthogonal matrix and scaled: a perfect match for layer 0
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)))
    rotated = [feats + [2.5 * feats[0] @ q] for feats in batches]
    res2 = run_stream(rotated, 4)
    assert res2.matrix[0, 3].item() == pytest.approx(1.0, abs=1e-6)


def test_float32_features_with_offset_stay_accurate():
    """Huge offsets in float32 activations: the float64 reference on the same float32 numbers agrees."""
    batches = make_layer_batches([64, 64], [500, 200], seed=4)
    offset = [[f + 1e4 for f in feats] for feats in batches]
    res = run_stream(offset, 2)
    want = ref.minibatch_cka(offset, offset)
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-6)


def test_rectangular_other_layers_same_model():
    batches = make_layer_batches([20, 20], [5, 6, 7], seed=5, dtype=torch.float64)
    model = Replay(3)
    m = StreamingCKA(model, ["l0", "l1"], other_layers=["l2", "l0", "l1"])
    with m.track():
        for feats in batches:
            model(feats)
    res = m.compute()
    want = ref.minibatch_cka([f[:2] for f in batches], [[f[2], f[0], f[1]] for f in batches])
    assert res.matrix.shape == (2, 3)
    np.testing.assert_allclose(res.matrix.numpy(), want, atol=1e-10)


def test_two_models():
    bx = make_layer_batches([16, 16, 9], [5, 6], seed=6, dtype=torch.float64)
    by = make_layer_batches([16, 16, 9], [3, 8, 2], seed=7, dtype=torch.float64)
    mx, my = Replay(2), Replay(3)
    m = StreamingCKA(mx, "blocks", other=my)
    with m.track():
        for fx, fy in zip(bx, by):
            my(fy)  # either order works
            mx(fx)
    res = m.compute()
    np.testing.assert_allclose(res.matrix.numpy(), ref.minibatch_cka(bx, by), atol=1e-10)
    assert res.layers_x == ["l0", "l1"] and res.layers_y == ["l0", "l1", "l2"]


def test_model_compared_with_itself_reproduces_square_matrix():
    batches = make_layer_batches([16, 16], [5, 6, 7], seed=8, dtype=torch.float64)
    single = run_stream(batches, 3)
    a, b = Replay(3), Replay(3)
    m = StreamingCKA(a, "blocks", other=b)
    with m.track():
        for feats in batches:
            a(feats)
            b(feats)
    np.testing.assert_allclose(m.compute().matrix.numpy(), single.matrix.numpy(), atol=1e-12)


def test_constant_layer_is_nan_with_one_warning():
    batches = make_layer_batches([16, 16], [5, 6], seed=9)
    batches = [feats + [torch.full((16, 3), 0.7)] for feats in batches]
    with pytest.warns(UserWarning, match="undefined.*l2"):
        res = run_stream(batches, 3)
    assert torch.isnan(res.matrix[2]).all() and torch.isnan(res.matrix[:, 2]).all()
    assert not torch.isnan(res.matrix[:2, :2]).any()
    assert res.undefined_x == ["l2"]


def test_small_batch_is_skipped_with_warning():
    batches = make_layer_batches([16, 3], [5, 6], seed=10, dtype=torch.float64)
    with pytest.warns(UserWarning, match="skipped a batch of 3"):
        res = run_stream(batches, 2)
    assert res.n_samples == 16 and res.n_batches == 1
    np.testing.assert_allclose(res.matrix.numpy(), ref.minibatch_cka(batches[:1], batches[:1]), atol=1e-10)


def test_module_running_twice_records_both_calls():
    model = Twice()
    x = [torch.randn(12, 6, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    m = StreamingCKA(model, ["lin1", "relu", "lin2"])
    with pytest.warns(UserWarning, match="runs 2 times"), m.track():
        for xb in x:
            model(xb)
    res = m.compute()
    assert res.layers_x == ["lin1", "relu#0", "relu#1", "lin2"]
    feats = []
    for xb in x:
        with torch.no_grad():
            h1 = model.lin1(xb)
            r0 = torch.relu(h1)
            h2 = model.lin2(r0)
            feats.append([h1, r0, torch.relu(h2), h2])
    np.testing.assert_allclose(res.matrix.numpy(), ref.minibatch_cka(feats, feats), atol=1e-6)


def test_unknown_layer_lists_close_names():
    with pytest.raises(ValueError, match=r"layer 'layer1.3' matches no module.*layer1\.0"):
        StreamingCKA(create("r18").net, ["layer1.3"])
    with pytest.raises(ValueError, match="matches no module"):
        StreamingCKA(create("r18").net, ["nothing*"])


def test_layer_that_never_runs_is_an_error():
    class Unused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    model = Unused()
    m = StreamingCKA(model, ["a", "b"])
    with pytest.raises(RuntimeError, match="'b' did not run"), m.track():
        model(torch.randn(8, 3))


def test_hooks_removed_after_track():
    model = create("r18").net
    m = StreamingCKA(model, "blocks")
    with m.track():
        pass
    assert all(not mod._forward_hooks for mod in model.modules())


def test_presets_and_globs_resolve():
    net = create("r18").net
    assert resolve_layers(net, "blocks")[0] == "stem"
    assert len(resolve_layers(net, "all")) == 59
    assert resolve_layers(net, ["layer1.*.bn?"]) == [
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.1.bn1",
        "layer1.1.bn2",
    ]
    assert all(
        any(k in n for k in ("bn", "relu", "avgpool", "fc")) for n in resolve_layers(net, "term_project")
    )


def test_reset_and_reuse():
    batches = make_layer_batches([16, 16], [5, 6], seed=11, dtype=torch.float64)
    model = Replay(2)
    m = StreamingCKA(model, "blocks")
    for _ in range(2):
        m.reset()
        with m.track():
            for feats in batches:
                model(feats)
        res = m.compute()
        assert res.n_samples == 32
    np.testing.assert_allclose(res.matrix.numpy(), ref.minibatch_cka(batches, batches), atol=1e-10)


def capture(net, layers, batches):
    """Reference activations via plain hooks (kept, unlike StreamingCKA's)."""
    mods = dict(net.named_modules())
    store: list[list[torch.Tensor]] = []
    current: list[torch.Tensor] = []
    hs = [mods[n].register_forward_hook(lambda m, a, o: current.append(o.detach().double())) for n in layers]
    with torch.no_grad():
        for x in batches:
            current.clear()
            net(x)
            store.append(list(current))
    for h in hs:
        h.remove()
    return store


@pytest.mark.parametrize(
    "precision,tol", [("exact", 1e-6), pytest.param("fast", 1e-4, marks=pytest.mark.slow)]
)
def test_precision_on_random_r18(precision, tol):
    torch.manual_seed(0)
    net = create("r18", num_classes=100).net.eval()
    layers = resolve_layers(
        net,
        ["stem", "layer1.0.conv1", "layer1.0.bn1", "layer2.0", "layer3.1.relu2", "layer4.1", "avgpool", "fc"],
    )
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(24, 3, 32, 32, generator=g) for _ in range(2)] + [
        torch.randn(10, 3, 32, 32, generator=g)
    ]
    feats = capture(net, layers, batches)
    want = ref.minibatch_cka(feats, feats)
    m = StreamingCKA(net, layers, precision=precision)
    with torch.no_grad(), m.track():
        for x in batches:
            net(x)
    got = m.compute().matrix.numpy()
    err = np.nanmax(np.abs(got - want))
    assert err <= tol, err
    assert np.isfinite(want).all()


def test_state_is_float64_and_sums_for_ddp():
    m = StreamingCKA(Replay(2), "blocks")
    for name in ("hsic_xy", "hsic_xx", "hsic_yy", "sum_aa", "n_samples"):
        assert getattr(m, name).dtype == torch.float64
        assert m._reductions[name].__name__ in ("dim_zero_sum", "sum")


def test_no_warning_on_clean_run():
    batches = make_layer_batches([16, 16], [5, 6], seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run_stream(batches, 2)
    assert not math.isnan(res.matrix[0, 1])
