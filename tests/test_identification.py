"""Layer identification with ties (issue 19.2): a layer counts as identified when its own entry is within one
standard error of its row's maximum; ties are counted; undefined layers leave the denominator; NaN when nothing
is defined; joint.csv says so and whether the classifier is among the layers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from vvm.cka import JointCKA
from vvm.cka.correspondence import TIE_ATOL, identification, layer_identification, near_max

NAMES = ["l0", "l1", "l2"]


def test_hits_within_one_standard_error_and_ties_by_hand():
    block = np.array([[0.90, 0.84, 0.10], [0.30, 0.80, 0.79], [0.10, 0.20, 0.70]])
    # without standard errors only the maximum counts: rows l0, l1, l2 hit; columns: l0 hit, l1 (max 0.84 in
    # row l0) and l2 (max 0.79 in row l1) miss
    got = identification(block, NAMES, NAMES)
    assert (got.hits, got.layers, got.ties) == (4, 6, 0) and got.accuracy == pytest.approx(4 / 6)
    se = np.full_like(block, 0.05)
    got = identification(block, NAMES, NAMES, se)
    # within 0.05 of the maximum: row l0: 0.84 < 0.85, no tie; row l1: 0.79 ties 0.80 (hit); row l2 hit; column
    # l0 hit; column l1: 0.80 ties 0.84 (hit); column l2: 0.70 < 0.74 (miss)
    assert (got.hits, got.layers, got.ties) == (5, 6, 2)
    assert layer_identification(block, NAMES, NAMES, se) == pytest.approx(5 / 6)


def test_undefined_layers_leave_the_denominator_and_nothing_defined_is_nan():
    block = np.array([[1.0, 0.2, 0.1], [0.2, 1.0, 0.3], [0.1, 0.3, 1.0]])
    block[:, 1] = np.nan  # layer l1 of B is constant: undefined
    got = identification(block, NAMES, NAMES)
    assert (got.hits, got.layers) == (4, 4) and got.accuracy == 1.0  # l0, l2 in both directions
    empty = identification(np.full((3, 3), np.nan), NAMES, NAMES)
    assert math.isnan(empty.accuracy) and empty.layers == 0  # undefined, not 0.0
    assert math.isnan(layer_identification(block, NAMES, ["x", "y", "z"]))
    assert not near_max(np.full((2, 2), np.nan)).any()


def test_exact_ties_need_no_standard_error():
    block = np.array([[1.0, 1.0 - TIE_ATOL / 10, 0.2], [1.0, 1.0, 0.2], [0.2, 0.2, 1.0]])
    got = identification(block, NAMES, NAMES)
    assert got.accuracy == 1.0 and got.ties == 4


def _tiny_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=16, depth=2,
        num_heads=2, num_classes=5,
    ).eval()  # fmt: skip


def test_two_copies_of_a_vit_identify_every_layer():
    """The term_project preset on a ViT records attn.proj, attn.proj_drop and drop_path1: three identical outputs. Two
    copies of one network must identify every layer (the first maximum gave 0.727)."""
    vit = _tiny_vit()
    m = JointCKA({"a": vit, "b": copy.deepcopy(vit)}, "term_project")
    g = torch.Generator().manual_seed(1)
    with m.track():
        for _ in range(3):
            m.feed(torch.randn(8, 3, 16, 16, generator=g))
    res = m.compute()
    layers = res.layers_of("a")
    assert {"blocks.0.attn.proj", "blocks.0.attn.proj_drop", "blocks.0.drop_path1"} <= set(layers)
    got = identification(
        res.block("a", "b").numpy(), layers, res.layers_of("b"), res.block("a", "b", "stderr")
    )
    assert got.accuracy == 1.0 and got.layers == 2 * len(layers)
    assert got.ties >= 2 * 2 * 3  # per block and direction, the three identical layers tie


def test_joint_csv_columns():
    """pair_rows: the accuracy with its tolerance, the layers counted, the ties, and the classifier."""
    from helpers import Replay, make_layer_batches

    from vvm.joint.files import pair_rows
    from vvm.sweep.records import JointJob

    a = Replay(3)
    m = JointCKA({"a": a, "b": copy.deepcopy(a), "c": Replay(2)}, "blocks")
    batches = make_layer_batches([8, 8], [3, 4, 5], seed=1)
    with m.track():
        for feats in batches:
            m.feed(feats)
    res = m.compute()
    jobs = [
        JointJob(str(i), tag, arch, "random", arch, None, {})
        for i, (tag, arch) in enumerate([("a", "replay3"), ("b", "replay3"), ("c", "replay2")])
    ]
    rows = {(r["model_a"], r["model_b"]): r for r in pair_rows(res, jobs, {"a": "l2", "b": "l2", "c": None})}
    ab, ac = rows[("a", "b")], rows[("a", "c")]
    assert ab["layer_identification"] == 1.0 and ab["identification_layers"] == 6
    assert ab["identification_ties"] == 0 and "standard error" in ab["identification_tolerance"]
    assert ab["includes_classifier"] is True
    assert math.isnan(ac["layer_identification"]) and ac["identification_layers"] == 0
    assert rows[("b", "c")]["includes_classifier"] is True  # b's classifier l2 is among its layers
    assert pair_rows(res, jobs, {"a": "l9", "b": None, "c": None})[0]["includes_classifier"] is False
