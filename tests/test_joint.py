"""Joint CKA: JointCKA's blocks against single-model and cross-model runs, the blocked product, DDP, and
``python -m vvm.joint`` over a small sweep (three r18 trained from different seeds on digits, a random one,
a failed job)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import Replay, Twice, free_port, init_gloo, make_layer_batches

from vvm.cka import HSICMetric, JointCKA, StreamingCKA
from vvm.cka.joint import auto_block_layers, best_matches, layer_identification, mean_row_max, move_models

BATCHES = [24, 24, 20, 16]
DIMS = {"a": [6, 40, 3], "b": [12, 5, 30, 8], "c": [20, 4]}


def features(seed_offset: int = 0) -> dict[str, list[list[torch.Tensor]]]:
    """Per model, per batch, per layer features; every model sees the same examples (a shared latent)."""
    out = {}
    for k, (key, dims) in enumerate(DIMS.items()):
        out[key] = make_layer_batches(BATCHES, dims, seed=seed_offset)  # same latent z for every model
        for b in out[key]:
            for i, f in enumerate(b):
                b[i] = f + 0.2 * (k + 1) * torch.randn(
                    f.shape, generator=torch.Generator().manual_seed(k * 97 + i)
                )
    return out


def run_joint(feats, keys=("a", "b", "c"), **kw) -> JointCKA:
    models = {k: Replay(len(DIMS[k])) for k in keys}
    m = JointCKA(models, "blocks", max_batches=len(BATCHES), **kw)
    with m.track():
        for b in range(len(BATCHES)):
            for k in keys:
                models[k](feats[k][b])  # the caller feeds each model its own input
    return m


def run_streaming(feats, x: str, y: str | None = None, **kw):
    mx = Replay(len(DIMS[x]))
    my = None if y is None else Replay(len(DIMS[y]))
    m = StreamingCKA(mx, "blocks", other=my, max_batches=len(BATCHES), **kw)
    with m.track():
        for b in range(len(BATCHES)):
            mx(feats[x][b])
            if my is not None:
                my(feats[y][b])
    return m.compute()


@pytest.mark.parametrize("options", [{}, {"kernel": "rbf"}, {"estimator": "biased"}])
def test_blocks_equal_single_model_and_cross_model_runs(options):
    feats = features()
    res = run_joint(feats, **options).compute()
    assert res.models == ["a", "b", "c"] and res.layers_x[:2] == ["a/l0", "a/l1"]
    assert res.model_index.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert res.matrix.shape == (9, 9) and res.n_samples == sum(BATCHES) and res.n_batches == len(BATCHES)
    for key in DIMS:
        single = run_streaming(feats, key, **options)
        np.testing.assert_allclose(res.block(key, key), single.matrix, atol=1e-9, rtol=0)
        np.testing.assert_allclose(res.block(key, key, "stderr"), single.stderr, atol=1e-9, rtol=0)
        assert res.layers_of(key) == single.layers_x
    for x, y in [("a", "b"), ("b", "c"), ("a", "c")]:
        cross = run_streaming(feats, x, y, **options)
        np.testing.assert_allclose(res.block(x, y), cross.matrix, atol=1e-9, rtol=0)
        np.testing.assert_allclose(res.block(y, x), cross.matrix.T, atol=1e-9, rtol=0)
        np.testing.assert_allclose(res.block(x, y, "stderr"), cross.stderr, atol=1e-9, rtol=0)
    torch.testing.assert_close(res.matrix, res.matrix.T, atol=1e-12, rtol=0)


def test_one_model_equals_its_single_model_run():
    feats = features(1)
    res = run_joint(feats, keys=("b",)).compute()
    single = run_streaming(feats, "b")
    np.testing.assert_allclose(res.matrix, single.matrix, atol=1e-12, rtol=0)
    np.testing.assert_allclose(res.stderr, single.stderr, atol=1e-12, rtol=0)
    np.testing.assert_allclose(res.batch_hsic_xy, single.batch_hsic_xy, atol=1e-12, rtol=0)


@pytest.mark.parametrize("block", [1, 2, 4])
def test_blocked_product_equals_one_product(block):
    feats = features(2)
    one = run_joint(feats, block_layers=None).compute()
    blocked = run_joint(feats, block_layers=block).compute()
    np.testing.assert_allclose(blocked.matrix, one.matrix, atol=1e-12, rtol=0)
    np.testing.assert_allclose(blocked.stderr, one.stderr, atol=1e-10, rtol=0)


def test_blocked_rectangular_update_equals_one_product():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(30, d, generator=g, dtype=torch.float64) for d in (5, 9, 3, 40, 7)]
    y = [torch.randn(30, d, generator=g, dtype=torch.float64) + x[1][:, :1] for d in (4, 11, 6)]
    kx = torch.stack([f @ f.T for f in x])
    ky = torch.stack([f @ f.T for f in y])
    one = HSICMetric([f"x{i}" for i in range(5)], [f"y{i}" for i in range(3)])
    blocked = HSICMetric([f"x{i}" for i in range(5)], [f"y{i}" for i in range(3)], block_layers=2)
    for m in (one, blocked):
        m.update(kx.clone(), ky.clone(), overwrite=True)
        m.update(kx[:, :20, :20].clone(), ky[:, :20, :20].clone())
    np.testing.assert_allclose(blocked.compute().matrix, one.compute().matrix, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="block_layers"):
        HSICMetric(["x"], block_layers=0)


def test_auto_blocks_when_the_stack_would_not_fit():
    stack = torch.zeros(40, 64, 64, dtype=torch.float64)
    per_layer = 64 * 64 * 8
    assert auto_block_layers(stack, free_bytes=1 << 34) is None
    # blocks are centred in place: a block of k layers needs about k layers' memory
    assert auto_block_layers(stack, free_bytes=4 * 5 * per_layer) == 5
    assert auto_block_layers(stack, free_bytes=4 * 2 * 40 * per_layer) is None  # the stack + its centred copy
    assert auto_block_layers(stack, free_bytes=1) == 1


def test_layers_that_run_twice_and_per_model_specs():
    nets = {"t": Twice(), "u": Twice()}
    m = JointCKA(nets, {"t": ["relu", "lin1"], "u": ["lin2"]})
    with m.track():
        m.feed(torch.randn(12, 6))
    assert m.compute().layers_x == ["t/relu#0", "t/relu#1", "t/lin1", "u/lin2"]
    with pytest.raises(ValueError, match="without '/'"):
        JointCKA({"a/b": Twice()}, "all")
    with pytest.raises(ValueError, match="no layer spec"):
        JointCKA(nets, {"t": ["relu"]})


def test_vision_models_are_hooked_on_their_net():
    from vvm.models import create

    a, b = create("r18", num_classes=10, seed=0), create("r18", num_classes=10, seed=1)
    m = JointCKA({"a": a, "b": b}, ["stem", "fc"])
    with m.track():
        m.feed(torch.randn(8, 3, 16, 16))
    res = m.compute()
    assert res.layers_x == ["a/stem", "a/fc", "b/stem", "b/fc"]
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-12)


def test_models_that_do_not_fit_together_name_the_way_out():
    class Huge(torch.nn.Linear):
        def to(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    with pytest.raises(RuntimeError, match=r"do not fit on cpu together.*--jobs.*--batch-size"):
        move_models({"a": torch.nn.Linear(2, 2), "b": Huge(2, 2)}, "cpu")


def test_block_facts():
    block = np.array([[0.9, 0.2, 0.1], [0.3, 0.4, 0.8], [0.1, 0.7, 0.6]])
    assert best_matches(block).tolist() == [0, 2, 1]
    assert mean_row_max(block) == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    names = ["l0", "l1", "l2"]
    # rows: l0 -> l0 (hit), l1 -> l2, l2 -> l1; columns: l0 -> l0 (hit), l1 -> l2, l2 -> l1
    assert layer_identification(block, names, names) == pytest.approx(2 / 6)
    assert np.isnan(layer_identification(block, names, ["x", "y", "z"]))
    nan_row = block.copy()
    nan_row[1] = np.nan
    assert best_matches(nan_row).tolist() == [0, -1, 1]


# ---------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    feats = features()
    models = {k: Replay(len(DIMS[k])) for k in DIMS}
    m = JointCKA(models, "blocks", kernel="rbf", max_batches=len(BATCHES))
    with m.track():
        for b in range(rank, len(BATCHES), world):  # whole batches per rank, with their global ids
            m.recorder.set_next_batch_id(b)
            for k in DIMS:
                models[k](feats[k][b])
    res = m.compute()
    if rank == 0:
        np.savez(out, cka=res.matrix.numpy(), stderr=res.stderr.numpy(), n=res.n_samples, b=res.n_batches)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    out = str(tmp_path / "ddp.npz")
    mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = np.load(out)
    single = run_joint(features(), kernel="rbf").compute()
    np.testing.assert_allclose(got["cka"], single.matrix.numpy(), atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["stderr"], single.stderr.numpy(), atol=1e-7, rtol=1e-6)
    assert int(got["n"]) == sum(BATCHES) and int(got["b"]) == len(BATCHES)


# ---------------------------------------------------------------------------------------------- a sweep
DIGITS = ["dataset=digits", "dataset.limit=48", "similarity.batch_size=16", "logger=none", "trainer=cpu"]
TRAIN = ["train.epochs=1", "train.batch_size=16", "train.precise_bn=48"]
SWEEP_JOBS = [
    ["model=r18", "init=pretrained", "seed=0"],
    ["model=r18", "init=pretrained", "seed=1"],
    ["model=r18", "init=random", "seed=0"],
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two r18 trained for one epoch from seeds 0 and 1 and a random r18 (jobs 0-2, each run by the pipeline as
    a sweep's job would be), a failed job (3), a compare= run outside the sweep; then the CLI's joint pass."""
    from compose import compose_settings
    from test_sweep import fake_job

    from vvm.joint.joint_pass import main
    from vvm.pipeline.steps import run

    root = tmp_path_factory.mktemp("joint")
    sweep_dir = root / "multirun" / "2026-01-02" / "03-04-05"
    common = [*DIGITS, *TRAIN, f"paths.checkpoints={root / 'checkpoints'}"]
    for job, overrides in enumerate(SWEEP_JOBS):
        run(compose_settings([*common, *overrides], sweep_dir / str(job)))
    fake_job(sweep_dir, "3", "vit_l32", "pretrained", status="failed")
    compare = ["model=r18", "init=random", "compare=r18", "compare_init=pretrained", "seed=0"]
    run(compose_settings([*common, *compare], root / "compare"))
    assert main([str(sweep_dir), "--logger", "none", "--no-progress"]) == 0
    return sweep_dir, root


def test_cli_writes_every_file(sweep):
    from vvm.io import load_npz

    sweep_dir, _ = sweep
    out = sweep_dir / "joint"
    for name in [
        "joint.npz",
        "joint.csv",
        "joint.png",
        "joint.pdf",
        "correspondence.png",
        "correspondence.pdf",
    ]:
        assert (out / name).stat().st_size > 0, name
    z = load_npz(out / "joint.npz")
    tags = ["r18-pretrained-0", "r18-pretrained-1", "r18-random"]
    assert list(z["models"]) == tags and list(z["jobs"]) == ["0", "1", "2"]
    assert z["cka"].shape == z["cka_stderr"].shape == (30, 30) and z["cka"].dtype == np.float64
    assert list(z["layers"])[:2] == ["r18-pretrained-0/stem", "r18-pretrained-0/layer1.0"]
    assert z["model_index"].tolist() == [i for i in range(3) for _ in range(10)]
    assert int(z["n_samples"]) == 48 and int(z["n_batches"]) == 3
    pairs = sorted(p.name for p in (out / "pairs").iterdir())
    assert len(pairs) == 3 and "r18-pretrained-0__r18-random.png" in pairs
    notes = " ".join(z["notes"])
    assert "job 3 (vit_l32, pretrained) skipped: it is failed" in notes and "not available offline" in notes


def test_seeds_layer_identification_and_diagonal_blocks(sweep):
    import pandas as pd

    from vvm.io import load_npz

    sweep_dir, _ = sweep
    z = load_npz(sweep_dir / "joint" / "joint.npz")
    for k in range(3):
        rows = np.flatnonzero(z["model_index"] == k)
        np.testing.assert_allclose(np.diag(z["cka"][np.ix_(rows, rows)]), 1.0, atol=1e-12)
    table = pd.read_csv(sweep_dir / "joint" / "joint.csv")
    assert len(table) == 3 and set(table["arch_a"]) == {"r18"}
    assert table["layer_identification"].between(0, 1).all()
    assert table["mean_cka"].between(-0.2, 1).all() and table["mean_row_max"].between(0, 1 + 1e-9).all()


def test_blocks_equal_the_jobs_own_runs_and_compare(sweep):
    from vvm.io import load_npz

    sweep_dir, root = sweep
    z = load_npz(sweep_dir / "joint" / "joint.npz")
    idx = z["model_index"]
    for k, job in [
        (0, "0"),
        (2, "2"),
    ]:  # the seed-0 jobs: the same batches as the joint pass (its seed is job 0's)
        single = load_npz(sweep_dir / job / "cka.npz")
        rows = np.flatnonzero(idx == k)
        np.testing.assert_allclose(z["cka"][np.ix_(rows, rows)], single["cka"], atol=1e-9, rtol=0)
        np.testing.assert_allclose(
            z["cka_stderr"][np.ix_(rows, rows)], single["cka_stderr"], atol=1e-9, rtol=0
        )
    compare = load_npz(root / "compare" / "cka.npz")  # rows: r18 random, columns: r18 pretrained (seed 0)
    block = z["cka"][np.ix_(np.flatnonzero(idx == 2), np.flatnonzero(idx == 0))]
    np.testing.assert_allclose(block, compare["cka"], atol=1e-9, rtol=0)


@pytest.mark.slow
def test_overrides_jobs_and_a_missing_checkpoint(sweep, tmp_path):
    import shutil

    from vvm.joint.joint_pass import joint_sweep

    sweep_dir, root = sweep
    out = joint_sweep(sweep_dir, out=tmp_path / "j", jobs=["0", "2"], layers="stem,fc", max_samples=32,
                      batch_size=16, logger="none", progress=False)  # fmt: skip
    res = out["result"]
    assert res.layers_x == ["r18-pretrained/stem", "r18-pretrained/fc", "r18-random/stem", "r18-random/fc"]
    assert res.n_samples == 32 and res.n_batches == 2
    # job 1's checkpoint gone: skipped with a note, never trained again
    shutil.move(root / "checkpoints", root / "moved")
    try:
        out = joint_sweep(
            sweep_dir, out=tmp_path / "k", jobs=["1", "2"], layers="fc", logger="none", progress=False
        )
    finally:
        shutil.move(root / "moved", root / "checkpoints")
    assert out["result"].models == ["r18-random"]
    assert any("job 1" in n and "the joint pass never trains" in n for n in out["notes"])


@pytest.mark.slow
def test_wandb_logging(sweep, tmp_path, monkeypatch):
    from test_sweep import fake_wandb

    from vvm.joint.joint_pass import joint_sweep

    sweep_dir, _ = sweep
    calls = fake_wandb(monkeypatch)
    out = joint_sweep(
        sweep_dir, out=tmp_path / "w", jobs=["0", "2"], layers="fc,stem", logger="wandb", progress=False
    )
    init = calls[0]["init"]
    assert (
        init["job_type"] == "joint-cka" and init["mode"] == "offline" and init["dir"] == str(tmp_path / "w")
    )
    logged = calls[1]["log"]
    assert {"joint/matrix", "joint/correspondence", "joint/pairs"} <= set(logged) and calls[-1] == {
        "finish": True
    }
    assert out["files"]["wandb"] is not None
