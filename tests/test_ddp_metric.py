"""StreamingCKA under torch.distributed: two CPU processes (gloo) sum their HSIC states in compute()."""

from __future__ import annotations

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import Replay, free_port, init_gloo, make_layer_batches

from vvm.cka import StreamingCKA

BATCHES = [32, 32, 24, 32, 16, 8]  # unequal sizes on purpose
DIMS = [6, 50, 3, 20]


def _stream(batches, **kw):
    model = Replay(len(DIMS))
    m = StreamingCKA(model, "blocks", **kw)
    with m.track():
        for feats in batches:
            model(feats)
    return m


OPTIONS = [{}, {"kernel": "rbf", "estimator": "biased"}]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    batches = make_layer_batches(BATCHES, DIMS, seed=3)
    mine = batches[rank::world]  # a known share: rank 0 gets batches 0, 2, 4; rank 1 gets 1, 3, 5
    for i, kw in enumerate(OPTIONS):
        res = _stream(mine, **kw).compute()
        if rank == 0:
            np.savez(
                f"{out}_{i}.npz",
                cka=res.matrix.numpy(),
                stderr=res.stderr.numpy(),
                n=res.n_samples,
                b=res.n_batches,
            )
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    for i, kw in enumerate(OPTIONS):
        got = np.load(f"{out}_{i}.npz")
        single = _stream(make_layer_batches(BATCHES, DIMS, seed=3), **kw).compute()
        np.testing.assert_allclose(got["cka"], single.matrix.numpy(), atol=1e-9, rtol=0)
        # the standard error comes from sums of squares: its rounding is about sqrt(eps / B), not eps
        np.testing.assert_allclose(got["stderr"], single.stderr.numpy(), atol=1e-7, rtol=1e-6)
        assert int(got["n"]) == sum(BATCHES) and int(got["b"]) == len(BATCHES)
