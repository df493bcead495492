"""Measures on a declared sample size (issue 27): the pass plan (pools of n examples, CKA's batches within them),
kNN and RSA on pools against scikit-learn/scipy on the same examples, independent of similarity.batch_size, CKA's
batches inside pools equal to CKA fed those batches, rdms.npz read by rsatoolbox, vvm.diff refusing runs that
measured different things, and (slow) two gloo processes giving what one gives."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import reference_measures as ref
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import Replay, free_port, init_gloo, make_layer_batches

from vvm.cka import StreamingCKA, StreamingSimilarity
from vvm.cka.pools import balanced_sizes, declared_pool, plan_pass
from vvm.cka.similarity import build_measures
from vvm.data.batches import EvalBatches, balanced_batches, pooled_plan

DIMS = [6, 50, 3, 20]


# ---------------------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize(
    "n_examples, batch, pool", [(100, 16, 32), (100, 7, 100), (40, 16, 1024), (64, 8, 32)]
)
def test_plan_pools_then_leftover_each_cut_into_balanced_batches(n_examples, batch, pool):
    plan = plan_pass(n_examples, batch, pool)
    size = min(pool, n_examples)
    assert plan.pool_size == size and plan.pools == n_examples // size and sum(plan.unit_sizes) == n_examples
    assert all(s == size for s in plan.unit_sizes[: plan.pools])
    assert all(s < size for s in plan.unit_sizes[plan.pools :]) and plan.whole_split == (pool > n_examples)
    spans = [b for u in range(plan.n_units) for b in plan.cka_batches(u)]
    assert [bid for _, _, bid in spans] == list(range(plan.n_cka_batches))  # every CKA batch once, in order
    for u in range(plan.n_units):
        assert [b - a for a, b, _ in plan.cka_batches(u)] == balanced_sizes(plan.unit_sizes[u], batch)


def test_pools_do_not_depend_on_the_batch_size_and_cka_alone_keeps_its_plan():
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0)).tolist()
    pools = {b: pooled_plan(order, b, 128)[0][:2] for b in (16, 32, 64, 256)}
    assert all(p == pools[16] for p in pools.values())
    assert pooled_plan(order, 64, None) == (balanced_batches(order, 64), None)  # measures off: unchanged
    # the whole split in one pool: CKA's batches are those it has without pools, and so is its fingerprint
    data = list(range(300))
    plain = EvalBatches(data, balanced_batches(order, 64), name="d", rank=0, world=1)
    units, layout = pooled_plan(order, 64, 1024)
    pooled = EvalBatches(data, units, name="d", rank=0, world=1, layout=layout)
    assert pooled.cka_plan() == plain.plan and pooled.fingerprint() == plain.fingerprint()
    assert pooled.pools() == [order] and layout.whole_split


def test_one_pass_has_one_pool_size():
    with pytest.raises(ValueError, match="measure.rsa.n=512, measure.knn.n=256: .* give them the same n"):
        build_measures(["rsa", "knn"], {"rsa": {"n": 512}, "knn": {"n": 256}}, {})
    assert declared_pool(build_measures(["cka", "knn"], {"knn": {"n": 64}}, {}).values()) == 64
    assert declared_pool(build_measures(["cka"], None, {}).values()) is None


# ---------------------------------------------------------------------------------------------- on pools
def pooled_run(feats, batch, pool, measures=("cka", "rsa", "knn"), params=None):
    """A pass over all of ``feats`` (a list of [N, d] layers) with a plan of pools of ``pool``."""
    n = feats[0].shape[0]
    plan = plan_pass(n, batch, pool)
    model = Replay(len(feats))
    m = StreamingSimilarity(model, "blocks", measures=list(measures), params=params, plan=plan)
    start = 0
    with m.track():
        for u, size in enumerate(plan.unit_sizes):
            m.recorder.set_next_batch_id(u)
            model([f[start : start + size] for f in feats])
            start += size
    return m.compute(), plan


def test_knn_and_rsa_on_pools_match_the_references_whatever_the_batch_size():
    feats = make_layer_batches([100], DIMS, seed=21, dtype=torch.float64)[0]
    params = {"knn": {"k": 5, "n": 32}, "rsa": {"n": 32, "distance": "euclidean"}}
    runs = {b: pooled_run(feats, b, 32, params=params)[0] for b in (8, 33)}
    pools = [[f[32 * p : 32 * (p + 1)] for f in feats] for p in range(3)]  # 100 = 3 pools of 32 + 4 left over
    for name, fn in (
        ("knn", lambda x, y: ref.knn(x, y, 5)),
        ("rsa", lambda x, y: ref.rsa(x, y, "spearman", "euclidean")),
    ):
        want, se = ref.weighted_mean(*ref.per_batch(pools, pools, fn))
        for b, res in runs.items():
            np.testing.assert_allclose(
                res[name].matrix.numpy(), want, atol=1e-9, rtol=0, err_msg=f"{name} b={b}"
            )
            off = ~np.eye(len(DIMS), dtype=bool)
            np.testing.assert_allclose(res[name].stderr.numpy()[off], se[off], atol=1e-9, rtol=0)
            assert res[name].n_batches == 3 and res[name].n_samples == 96
            assert res[name].facts["pool_size"] == 32 and res[name].facts["n_pools"] == 3
    assert runs[8]["knn"].facts["chance"] == pytest.approx(5 / 31)
    assert runs[8]["cka"].n_samples == 100  # CKA reads the leftover too


def test_cka_inside_pools_is_cka_over_the_same_batches():
    feats = make_layer_batches([90], DIMS, seed=22, dtype=torch.float64)[0]
    res, plan = pooled_run(feats, 16, 40, params={"knn": {"k": 3, "n": 40}, "rsa": {"n": 40}})
    model = Replay(len(DIMS))
    alone = StreamingCKA(model, "blocks", max_batches=plan.n_cka_batches)
    with alone.track():
        for u in range(plan.n_units):
            base = sum(plan.unit_sizes[:u])
            for a, b, _ in plan.cka_batches(u):
                model([f[base + a : base + b] for f in feats])
    want = alone.compute()
    assert res["cka"].n_batches == plan.n_cka_batches == want.n_batches
    np.testing.assert_allclose(res["cka"].matrix.numpy(), want.matrix.numpy(), atol=1e-12, rtol=0)
    np.testing.assert_allclose(res["cka"].batch_hsic_xy.numpy(), want.batch_hsic_xy.numpy(), rtol=1e-10)


def test_one_pool_has_no_standard_error():
    feats = make_layer_batches([30], DIMS, seed=23, dtype=torch.float64)[0]
    res, plan = pooled_run(feats, 8, 1024, measures=("knn",), params={"knn": {"k": 4}})
    off = ~np.eye(len(DIMS), dtype=bool)
    assert plan.whole_split and np.isnan(res["knn"].stderr.numpy()[off]).all()
    assert res["knn"].facts == {
        "pool_size": 30,
        "n_pools": 1,
        "n_declared": 1024,
        "whole_split": True,
        "chance": 4 / 29,
    }
    assert "n=30 (the whole split) x 1 pool, chance 0.138" == res["knn"].note()


# ---------------------------------------------------------------------------------------------- rdms.npz
@pytest.mark.parametrize(
    "distance, method, scale", [("correlation", "correlation", 1), ("sqeuclidean", "euclidean", "d")]
)
def test_rdms_npz_is_what_rsatoolbox_computes(tmp_path, distance, method, scale):
    """The first pool's RDMs as rsatoolbox reads them equal rsatoolbox's calc_rdm on the same features
    (rsatoolbox's 'euclidean' is the squared distance over the number of features)."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import RDMs, calc_rdm

    from vvm.callbacks.cka import write_rdms
    from vvm.io import load_npz

    feats = make_layer_batches([50], [6, 40, 9], seed=24, dtype=torch.float64)[0]
    res, _ = pooled_run(feats, 16, 20, measures=("rsa",), params={"rsa": {"n": 20, "distance": distance}})
    write_rdms(tmp_path / "rdms.npz", res_measure(feats, distance), res["rsa"], list(range(100, 120)))
    z = load_npz(tmp_path / "rdms.npz")
    got = RDMs(
        z["dissimilarities"], dissimilarity_measure=str(z["dissimilarity_measure"]),
        rdm_descriptors={"layer": list(z["layers"])}, pattern_descriptors={"index": list(z["indices"])},
    )  # fmt: skip
    assert got.n_cond == 20 and list(got.pattern_descriptors["index"]) == list(range(100, 120))
    for i, f in enumerate(feats):
        want = calc_rdm(Dataset(f[:20].numpy()), method=method).dissimilarities[0]
        want = want * (f.shape[1] if scale == "d" else 1)
        np.testing.assert_allclose(got.dissimilarities[i], want, rtol=1e-9, atol=1e-10)


def res_measure(feats, distance):
    """The RSA measure of a pass over the first pool of 20 (its ``first_rdms`` kept)."""
    model = Replay(len(feats))
    m = StreamingSimilarity(
        model, "blocks", measures=["rsa"], params={"rsa": {"n": 20, "distance": distance}}
    )
    with m.track():
        model([f[:20] for f in feats])
    return m.measures["rsa"]


# ---------------------------------------------------------------------------------------------- vvm.diff
def test_diff_refuses_maps_of_different_settings_naming_the_key(tmp_path):
    from vvm.diff import cka_difference
    from vvm.io import InputError, write_npz

    def write(name, comparable):
        z = {"matrix": np.eye(2), "stderr": np.zeros((2, 2)), "layers_x": np.array(["a", "b"]),
             "layers_y": np.array(["a", "b"]), "n_batches": np.array(3), "comparable": json.dumps(comparable)}  # fmt: skip
        return write_npz(tmp_path / f"{name}.npz", **z)

    base = {"measure.knn.k": 10, "measure.knn.n": 1024, "similarity.precision": "exact", "pool_size": 1024}
    a = write("a", base)
    cka_difference(a, write("same", base), measure="knn")  # clean
    for key, value in (("measure.knn.k", 20), ("pool_size", 360), ("similarity.precision", "fast")):
        b = write(key, {**base, key: value})
        with pytest.raises(InputError, match=rf"differ in {key} \({base[key]} vs {value}\)"):
            cka_difference(a, b, measure="knn")


# ---------------------------------------------------------------------------------------------- DDP (slow)
N_DDP, POOL, BATCH = 150, 32, 12
PARAMS = {"rsa": {"n": POOL}, "knn": {"k": 4, "n": POOL}}


def _ddp_stream(feats, units):
    plan = plan_pass(N_DDP, BATCH, POOL)
    model = Replay(len(DIMS))
    m = StreamingSimilarity(model, "blocks", measures=["cka", "rsa", "knn"], params=PARAMS, plan=plan)
    with m.track():
        for u in units:
            start = sum(plan.unit_sizes[:u])
            m.recorder.set_next_batch_id(u)
            model([f[start : start + plan.unit_sizes[u]] for f in feats])
    return m.compute()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    feats = make_layer_batches([N_DDP], DIMS, seed=25)[0]
    units = list(range(plan_pass(N_DDP, BATCH, POOL).n_units))[rank::world]  # whole pools per rank
    res = _ddp_stream(feats, units)
    if rank == 0:
        np.savez(
            f"{out}.npz",
            **{f"{k}_{f}": getattr(r, f).numpy() for k, r in res.items() for f in ("matrix", "stderr")},
        )
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_pools_on_two_processes_match_one(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = np.load(f"{out}.npz")
    single = _ddp_stream(
        make_layer_batches([N_DDP], DIMS, seed=25)[0], range(plan_pass(N_DDP, BATCH, POOL).n_units)
    )
    for name in ("cka", "rsa", "knn"):
        np.testing.assert_allclose(got[f"{name}_matrix"], single[name].matrix.numpy(), atol=1e-9, rtol=0)
        np.testing.assert_allclose(got[f"{name}_stderr"], single[name].stderr.numpy(), atol=1e-7, rtol=1e-6)
    assert single["knn"].n_batches == 4 and single["cka"].n_samples == N_DDP  # 4 pools of 32, 22 left over


# ---------------------------------------------------------------------------------------------- slow: real runs
@pytest.mark.slow
def test_knn_on_pools_does_not_follow_the_batch_size_on_a_real_model():
    """Issue 27's experiment on r18 and 256 digits: within CKA batches the mean off-diagonal kNN moves with the
    batch size; on pools of 64 it is the same at every batch size, and equals scikit-learn's on each pool."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_knn_pools import engine_pools, load_images, off_mean, per_batch, raw_grams

    from vvm.cka.presets import resolve_layers
    from vvm.models import create

    model = create("r18", num_classes=10, seed=0).net.eval()
    x = load_images(256, 0)
    layers = resolve_layers(model, "blocks")
    pooled = {b: engine_pools(model, x, b, 64, 10) for b in (16, 64, 256)}
    for b, (matrix, per_pool) in pooled.items():
        np.testing.assert_allclose(matrix, pooled[16][0], atol=1e-12, err_msg=f"batch {b}")
        assert per_pool.shape[0] == 4
    feats = {}
    named = dict(model.named_modules())
    hooks = [
        named[n].register_forward_hook(lambda m, a, o, n=n: feats.__setitem__(n, o.flatten(1)))
        for n in layers
    ]
    with torch.inference_mode():
        model(x[:64])
    for h in hooks:
        h.remove()
    for i, j in ((0, 9), (3, 7), (8, 9)):
        want = ref.knn(feats[layers[i]], feats[layers[j]], 10)
        assert pooled[16][1][0, i, j] == pytest.approx(want, abs=1e-12)
    grams = raw_grams(model, layers, x)
    before = {b: per_batch(grams, torch.arange(256), b, 10) for b in (16, 64)}
    (m16, s16), (m64, s64) = before[16], before[64]
    assert m16 - m64 > 3 * math.hypot(s16, s64)  # the old definition follows the batch size
    assert off_mean(pooled[16][0]) < m16


@pytest.mark.slow
def test_diff_is_clean_across_batch_sizes_and_refuses_another_k(tmp_path):
    from compose import compose_settings

    from vvm.diff import cka_difference
    from vvm.io import InputError
    from vvm.pipeline.steps import run

    small = ["dataset=synthetic", "dataset.train_size=32", "dataset.test_size=48", "dataset.image_size=16",
             "logger=none", "trainer=cpu", "measures=[cka,knn]", "measure.knn.n=24"]  # fmt: skip
    for name, extra in (
        ("b8", ["similarity.batch_size=8"]),
        ("b24", ["similarity.batch_size=24"]),
        ("k3", ["measure.knn.k=3"]),
    ):
        assert run(compose_settings([*small, *extra], tmp_path / name))["status"] == "ok"
    d = cka_difference(tmp_path / "b8", tmp_path / "b24", measure="knn")
    assert bool(d["paired"]) and np.nanmax(np.abs(d["diff"])) < 1e-12 and not d["significant"].any()
    cka_difference(tmp_path / "b8", tmp_path / "b24")  # CKA: clean (different batches, unpaired)
    with pytest.raises(InputError, match=r"differ in measure.knn.k \(10 vs 3\)"):
        cka_difference(tmp_path / "b8", tmp_path / "k3", measure="knn")


def test_a_pools_gram_from_its_lower_triangle_is_the_full_gram():
    """Pools' Grams are computed as row blocks on and below the diagonal, mirrored: the same Gram and raw parts."""
    from vvm.cka.functional import linear_gram

    x = torch.randn(301, 700, generator=torch.Generator().manual_seed(26), dtype=torch.float64) + 5.0
    for chunk in (None, 1 << 14):
        full, parts = linear_gram(x, chunk_elements=chunk, raw=True)
        tri, tparts = linear_gram(x, chunk_elements=chunk, raw=True, row_blocks=3)
        assert torch.equal(tri, tri.T)
        np.testing.assert_allclose(tri.numpy(), full.numpy(), rtol=1e-12, atol=1e-9)
        for a, b in zip(parts, tparts):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_joint_notes_jobs_run_with_other_settings(tmp_path, caplog):
    from compose import compose_settings

    from vvm.joint.joint_pass import setting_notes
    from vvm.sweep.records import JointJob

    def job(name, *overrides):
        settings = compose_settings(["dataset=digits", *overrides], tmp_path / name)
        return JointJob(name, name, "r18", "random", "resnet", settings, {})

    jobs = [job("0"), job("1", "measure.knn.k=5", "similarity.batch_size=64")]
    notes = setting_notes(jobs, ["cka", "knn"])
    assert len(notes) == 1 and "job 1" in notes[0] and "measure.knn.k (5 vs 10)" in notes[0]
    assert "batch_size" not in notes[0]  # the CKA batch size moves no measure's expectation
    assert "measure.knn.k (5 vs 10)" in caplog.text
    assert setting_notes(jobs, ["cka"]) == []  # CKA alone: k is not its setting
