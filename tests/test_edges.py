"""The rare paths of the estimate (issue 19): DDP shards with spawned DataLoader workers, padding-only ranks,
RBF bandwidths under DDP, the oneDNN precision flag, per-batch bandwidths, one module under two names."""

from __future__ import annotations

import pickle
import time
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vvm.data import batches as batches_mod
from vvm.data.batches import IGNORE_LABEL, EvalBatches, balanced_batches, permutation

# ---------------------------------------------------------------------------------------------- 1. shards
N, BATCH, WORLD = 38, 8, 2  # 5 batches of 7-8 over 2 ranks: rank 1 runs one padding batch


def _check_shards(items_of_rank):
    """Every planned example once over the ranks, batch ids right, padding masked."""
    ds, plan = _dataset_and_plan()
    seen = []
    for rank, (eb, items) in items_of_rank.items():
        assert len(items) == len(eb) == 3
        for i, (x, y) in enumerate(items):
            bid, padding = eb.batch_info(i)
            if padding:
                assert rank == 1 and (y == IGNORE_LABEL).all()
                continue
            assert bid % WORLD == rank
            assert x[:, 0].long().tolist() == plan[bid] == y.tolist()
            seen.extend(y.tolist())
    assert sorted(seen) == list(range(N))  # every example exactly once


def _dataset_and_plan():
    ds = TensorDataset(torch.arange(N).float()[:, None], torch.arange(N))
    return ds, balanced_batches(permutation(N, 0), BATCH)


def _made_in_main(monkeypatch, rank):
    """The EvalBatches of ``rank`` as the main process of a 2-process group makes it."""
    monkeypatch.setattr(batches_mod, "rank_and_world", lambda: (rank, WORLD))
    eb = EvalBatches(*_dataset_and_plan())
    monkeypatch.setattr(batches_mod, "rank_and_world", lambda: (0, 1))  # a spawned worker: no process group
    return eb


def test_a_worker_without_the_process_group_runs_the_main_process_shard(monkeypatch):
    """What a spawned worker does, in this process: it unpickles the dataset and iterates it as worker k of 2,
    with no process group (rank_and_world() says 0 of 1 there)."""
    from torch.utils.data import _utils

    out = {}
    for rank in range(WORLD):
        eb = _made_in_main(monkeypatch, rank)
        items = []
        for k in range(2):
            worker = pickle.loads(pickle.dumps(eb))
            info = _utils.worker.WorkerInfo(id=k, num_workers=2, seed=0, dataset=worker)
            monkeypatch.setattr(_utils.worker, "_worker_info", info)
            items.append(list(worker))
        monkeypatch.setattr(_utils.worker, "_worker_info", None)
        # the DataLoader takes the workers' batches in turn: 0, 1, 0, ...
        out[rank] = (eb, [b for pair in zip(*items) for b in pair] + items[0][len(items[1]) :])
    _check_shards(out)


@pytest.mark.slow
def test_spawned_workers_run_the_main_process_shard(monkeypatch):
    """The same with a real ``spawn`` DataLoader (two workers per rank; each worker imports vvm.data)."""
    out = {}
    for rank in range(WORLD):
        eb = _made_in_main(monkeypatch, rank)
        loader = DataLoader(eb, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        out[rank] = (eb, list(loader))
    _check_shards(out)


def test_shard_given_explicitly_and_checked():
    ds = TensorDataset(torch.arange(10).float()[:, None], torch.arange(10))
    plan = balanced_batches(list(range(10)), 4)
    eb = EvalBatches(ds, plan, rank=1, world=2)
    assert [eb.batch_info(i) for i in range(len(eb))] == [(1, False), (0, True)]
    with pytest.raises(ValueError, match="rank=2"):
        EvalBatches(ds, plan, rank=2, world=2)


# ---------------------------------------------------------------------------------------------- 3. padding rank
def test_layers_renamed_on_a_padding_batch_keep_the_states_on_the_metrics_device():
    """A rank whose only batch is padding learns its layer names (a module that runs twice: relu#0, relu#1) on
    that batch and never updates: the re-allocated states must be on the metric's device, not the CPU (the
    meta device stands in for a GPU here)."""
    from helpers import Twice

    from vvm.cka import StreamingCKA

    model = Twice()
    m = StreamingCKA(model, ["lin1", "relu"]).to("meta")
    with m.track(), torch.no_grad():
        m.recorder.mask_next_batch()
        model(torch.randn(8, 6))
    assert m.layers_x == ["lin1", "relu#0", "relu#1"]
    states = {name: getattr(m, name).device.type for name in m._defaults}
    assert set(states.values()) == {"meta"}, states


# ---------------------------------------------------------------------------------------------- 5. precision
_CPU_PROBE = r"""
import importlib.util, json, sys, torch
# precision.py alone (it imports only torch): the vvm.cka package would import torchmetrics, seconds of start-up
spec = importlib.util.spec_from_file_location("vvm_precision", sys.argv[1])
precision = importlib.util.module_from_spec(spec)
spec.loader.exec_module(precision)
matmul_precision = precision.matmul_precision
flags = {"cuda": torch.backends.cuda.matmul, "cpu": torch.backends.mkldnn.matmul}
def state():
    return {k: f.fp32_precision for k, f in flags.items()}
out = []
for setup in ["pass", "torch.set_float32_matmul_precision('medium')", "torch.set_float32_matmul_precision('high')",
              "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
              "torch.backends.mkldnn.matmul.fp32_precision = 'none'; torch.backends.fp32_precision = 'bf16'"]:
    exec(setup)
    before, inside = state(), {}
    for tf32 in (True, False):
        with matmul_precision(tf32):
            inside[str(tf32)] = state()
    out.append({"setup": setup, "before": before, "inside": inside, "after": state()})
print(json.dumps(out))
"""


def test_cpu_matmuls_stay_float32_and_flags_are_restored():
    """set_float32_matmul_precision("medium") makes oneDNN run float32 CPU matmuls in bf16: inside the hooks'
    context they run in float32 (``ieee``) in both modes, and every flag is left as found."""
    import json
    import subprocess
    import sys

    import vvm.cka.precision

    probe = [sys.executable, "-c", _CPU_PROBE, vvm.cka.precision.__file__]
    proc = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs[1]["before"]["cpu"] == "bf16"  # what "medium" does on the CPU (the reason for the fix)
    for run in runs:
        assert run["after"] == run["before"], run
        assert run["inside"]["True"] == {"cuda": "tf32", "cpu": "ieee"}, run
        assert run["inside"]["False"] == {"cuda": "ieee", "cpu": "ieee"}, run


# ---------------------------------------------------------------------------------------------- 6. per_batch σ²
def test_per_batch_bandwidth_records_the_first_batchs_sigma2():
    """rbf_bandwidth=per_batch: the kernels use every batch's own σ², the result records the first batch's (as
    documented); checked against scipy's squared distances."""
    import numpy as np
    from helpers import Replay, make_layer_batches
    from scipy.spatial.distance import pdist

    from vvm.cka import StreamingCKA

    batches = make_layer_batches([12, 10, 9], [5, 7], seed=4)
    batches[1] = [3.0 * f for f in batches[1]]  # later batches on other scales: their σ² differ
    batches[2] = [0.2 * f for f in batches[2]]
    model = Replay(2)
    m = StreamingCKA(model, "blocks", kernel="rbf", kernel_params={"bandwidth": "per_batch", "frac": 0.7})
    with m.track():
        for feats in batches:
            model(feats)
    res = m.compute()
    first = [0.7**2 * np.median(pdist(f.double().numpy(), "sqeuclidean")) for f in batches[0]]
    np.testing.assert_allclose(res.rbf_sigma2_x.numpy(), first, rtol=1e-5)
    np.testing.assert_allclose(res.rbf_sigma2_y.numpy(), first, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- 4. RBF under DDP


def _rbf_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0 runs batch 0 (8 examples), rank 1 batch 1 (3: below the unbiased estimator's 4, skipped), with a
    fixed RBF bandwidth broadcast from rank 0: StreamingCKA with two models (two broadcasts) and JointCKA."""
    import numpy as np
    import torch.distributed as dist
    from helpers import Replay, init_gloo, make_layer_batches

    from vvm.cka import JointCKA, StreamingCKA

    init_gloo(rank, world, port, timeout_s=60)
    mine = make_layer_batches([8, 3], [5, 6], seed=2)[rank]
    a, b = Replay(2), Replay(2)
    results = {}
    for name, m in [("streaming", StreamingCKA(a, "blocks", other=b, kernel="rbf", max_batches=2)),
                    ("joint", JointCKA({"a": a, "b": b}, "blocks", kernel="rbf", max_batches=2))]:  # fmt: skip
        with warnings.catch_warnings(), m.track():
            warnings.simplefilter("ignore")  # the skipped batch's warning
            m.recorder.set_next_batch_id(rank)
            a(mine)
            b(mine)
        res = m.compute()
        results[name] = (res.matrix.numpy(), res.rbf_sigma2_x.numpy(), res.n_samples)
    # the other way round: rank 0's first batch is the small one, so no rank has a bandwidth: all raise
    m = StreamingCKA(a, "blocks", other=b, kernel="rbf", max_batches=2)
    error = ""
    try:
        with warnings.catch_warnings(), m.track():
            warnings.simplefilter("ignore")
            a(make_layer_batches([8, 3], [5, 6], seed=2)[1 - rank])
            b(make_layer_batches([8, 3], [5, 6], seed=2)[1 - rank])
    except ValueError as e:
        error = str(e)
    flat = {f"{k}_{i}": v for k, t in results.items() for i, v in enumerate(t)}
    np.savez(f"{out}_{rank}.npz", error=error, **flat)
    dist.destroy_process_group()


@pytest.mark.slow
def test_fixed_rbf_bandwidth_under_ddp_with_a_rank_of_small_batches_does_not_hang(tmp_path):
    """Every rank joins rank 0's broadcast of the fixed bandwidths, even one whose batches are all skipped (it
    hung before: the broadcast waited for a rank that never called it)."""
    import numpy as np
    import torch.multiprocessing as mp
    from helpers import Replay, free_port, make_layer_batches

    from vvm.cka import StreamingCKA

    out = str(tmp_path / "rbf")
    ctx = mp.start_processes(
        _rbf_worker, args=(2, free_port(), out), nprocs=2, join=False, start_method="spawn"
    )
    try:
        deadline = time.monotonic() + 240
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "the ranks hang in the bandwidth broadcast"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    a, b = Replay(2), Replay(2)
    single = StreamingCKA(a, "blocks", other=b, kernel="rbf")
    first = make_layer_batches([8, 3], [5, 6], seed=2)[0]
    with single.track():
        a(first)
        b(first)
    want = single.compute()
    for rank in range(2):
        z = np.load(f"{out}_{rank}.npz")
        for name in ("streaming", "joint"):
            assert int(z[f"{name}_2"]) == 8  # the 3-example batch adds nothing
            np.testing.assert_allclose(z[f"{name}_1"][:2], want.rbf_sigma2_x.numpy(), rtol=1e-12)
        np.testing.assert_allclose(z["streaming_0"], want.matrix.numpy(), atol=1e-12)
        assert "rank 0's first batch" in str(z["error"]) and "per_batch" in str(z["error"])


# ---------------------------------------------------------------------------------------------- 12b. one module
def test_one_network_under_two_names_is_refused():
    """JointCKA({"a": net, "b": net}) ran every batch twice through the same hooks (n_samples doubled)."""
    import copy

    from helpers import Replay, make_layer_batches

    from vvm.cka import JointCKA, StreamingCKA

    net = Replay(2)
    with pytest.raises(ValueError, match=r"models 'a' and 'b' are the same network.*copy\.deepcopy"):
        JointCKA({"a": net, "b": net}, "blocks")
    shared = torch.nn.Sequential(net, torch.nn.Identity())  # another model that holds net inside it
    with pytest.raises(ValueError, match="model 'a' is part of model 'b'"):
        JointCKA({"a": net, "b": shared}, {"a": ["l0"], "b": ["1"]})
    with pytest.raises(ValueError, match="are the same network"):
        StreamingCKA(net, "blocks", other=net)
    twin = copy.deepcopy(net)  # the way out: a copy counts every batch once
    m = JointCKA({"a": net, "b": twin}, "blocks")
    batch = make_layer_batches([8], [3, 4])[0]
    with m.track():
        m.feed(batch)
    assert m.compute().n_samples == 8
