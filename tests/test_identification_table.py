"""Kornblith et al. (2019)'s Table 2 experiment: model=plain, the passes every index needs, the tie-split layer
identification against a brute-force count, the classifier left out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vvm.identification.table import INDICES, accuracy, plan_passes, tie_split_hits


def test_plain_cnn_has_depth_conv_layers_widening_by_thirds():
    from vvm.models import create

    m = create("plain", num_classes=10, depth=10, width=4)
    presets = m.net.layer_presets()
    assert presets["blocks"] == [f"layers.{i}" for i in range(10)] + ["fc"]
    outs = {}
    for name in presets["blocks"][:-1]:
        dict(m.net.named_modules())[name].register_forward_hook(lambda mod, a, o, n=name: outs.update({n: o}))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    shapes = [tuple(outs[f"layers.{i}"].shape[1:]) for i in range(10)]
    assert (
        shapes[:4] == [(4, 32, 32)] * 4
        and shapes[4:7] == [(8, 16, 16)] * 3
        and shapes[7:] == [(16, 8, 8)] * 3
    )
    with pytest.raises(ValueError, match="depth >= 1"):
        create("plain", depth=0)


def test_every_index_in_five_passes_each_measure_once_per_pass():
    passes = plan_passes()
    assert sorted(i for p in passes for i in p) == list(range(len(INDICES))) and len(passes) == 5
    for p in passes:
        names = [INDICES[i][1] for i in p]
        assert len(set(names)) == len(names) and len({str(INDICES[i][3]) for i in p}) == 1


def brute_force(block):
    """Row by row: the rows whose own entry is a maximum (to 1e-9) count 1/number of maxima."""
    hits, rows, ties = 0.0, 0, 0
    for i, row in enumerate(block):
        if not np.isfinite(row[i]):
            continue
        rows += 1
        best = np.nanmax(row)
        tied = [j for j, v in enumerate(row) if np.isfinite(v) and v >= best - 1e-9]
        ties += len(tied) > 1
        hits += (i in tied) / len(tied)
    return hits, rows, ties


def test_tie_split_hits_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        block = rng.integers(0, 3, (6, 6)).astype(float) / 2  # many ties
        block[rng.integers(0, 6), :] = np.nan if rng.random() < 0.3 else block[0]
        h, r, t = tie_split_hits(block)
        bh, br, bt = brute_force(block)
        assert h == pytest.approx(bh) and (r, t) == (br, bt)
    assert tie_split_hits(np.ones((4, 4)))[0] == pytest.approx(1.0)  # all tied: 4 rows x 1/4


@dataclass
class FakeJoint:
    models: list
    layers: list
    matrix: np.ndarray

    def layers_of(self, model):
        return list(self.layers)

    def block(self, a, b):
        i, j = self.models.index(a), self.models.index(b)
        n = len(self.layers)
        return torch.as_tensor(self.matrix[i * n : (i + 1) * n, j * n : (j + 1) * n])


def test_accuracy_leaves_the_classifier_out_and_counts_both_directions():
    layers = ["l0", "l1", "fc"]
    block = np.array(
        [[0.9, 0.2, 0.1], [0.3, 0.8, 0.9], [0.1, 0.95, 0.99]]
    )  # l1's best is fc in one direction
    full = np.block([[np.eye(3), block], [block.T, np.eye(3)]])
    res = FakeJoint(["a", "b"], layers, full)
    with_fc = accuracy(res, {"a": None, "b": None})
    without = accuracy(res, {"a": "fc", "b": "fc"})
    assert without == {"accuracy": 1.0, "layers": 4, "ties": 0}
    assert with_fc["layers"] == 6 and with_fc["accuracy"] == pytest.approx(4 / 6)
