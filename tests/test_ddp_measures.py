"""RSA and mutual kNN under torch.distributed: two CPU processes (gloo) that each stream their share of the
batches sum their states in compute(), and give what one process gives over all the batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import Replay, free_port, init_gloo, make_layer_batches

from vvm.cka import StreamingSimilarity

BATCHES = [32, 32, 24, 32, 16, 20]  # unequal sizes on purpose
DIMS = [6, 50, 3, 20]
MEASURES = ["cka", "rsa", "knn"]
PARAMS = {"rsa": {"correlation": "spearman"}, "knn": {"k": 5}}


def _stream(batches, ids):
    model = Replay(len(DIMS))
    m = StreamingSimilarity(model, "blocks", measures=MEASURES, params=PARAMS, max_batches=len(BATCHES))
    with m.track():
        for i, feats in zip(ids, batches):
            m.recorder.set_next_batch_id(i)
            model(feats)
    return m.compute()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    batches = make_layer_batches(BATCHES, DIMS, seed=3)
    ids = list(range(len(BATCHES)))[rank::world]  # rank 0: batches 0, 2, 4; rank 1: 1, 3, 5
    res = _stream(batches[rank::world], ids)
    if rank == 0:
        arrays = {}
        for name, r in res.items():
            arrays[f"{name}_matrix"], arrays[f"{name}_stderr"] = r.matrix.numpy(), r.stderr.numpy()
            arrays[f"{name}_n"], arrays[f"{name}_b"] = r.n_samples, r.n_batches
        for name in ("rsa", "knn"):
            arrays[f"{name}_batches"] = res[name].batch_values.numpy()
        np.savez(f"{out}.npz", **arrays)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = np.load(f"{out}.npz")
    single = _stream(make_layer_batches(BATCHES, DIMS, seed=3), range(len(BATCHES)))
    for name in MEASURES:
        np.testing.assert_allclose(got[f"{name}_matrix"], single[name].matrix.numpy(), atol=1e-9, rtol=0)
        # standard errors come from sums of squares: rounding about sqrt(eps / B), not eps
        np.testing.assert_allclose(got[f"{name}_stderr"], single[name].stderr.numpy(), atol=1e-7, rtol=1e-6)
        assert int(got[f"{name}_n"]) == sum(BATCHES) and int(got[f"{name}_b"]) == len(BATCHES)
    for name in ("rsa", "knn"):  # per-batch values, by global batch id, from both ranks
        np.testing.assert_allclose(got[f"{name}_batches"], single[name].batch_values.numpy(), atol=1e-12)
    assert np.isfinite(got["rsa_matrix"]).all() and np.isfinite(got["knn_matrix"]).all()
