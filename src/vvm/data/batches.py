"""The batches of a CKA pass: a seeded random permutation of the split, cut into balanced batches, dealt to
ranks whole.

Minibatch CKA averages a U-statistic over batches, which assumes each batch is an i.i.d. sample of the split,
and it should not depend on how many processes computed it. So:

- order: a seeded random permutation of the split (file order is never random: an ImageFolder lists images
  class by class); ``max_samples`` keeps the permutation's first examples, a random subset;
- sizes: ``ceil(N / batch_size)`` batches whose sizes differ by at most one (no small ragged last batch);
- ranks: batch ``b`` of the plan is run by rank ``b mod W``; every rank runs ``ceil(B / W)`` batches, and a rank
  whose share is short runs a masked copy of batch 0 (labels ``IGNORE_LABEL``) that adds nothing, so every
  example is counted exactly once for any number of processes. The rank and world size are read once, where the
  :class:`EvalBatches` is made (the main process, after the process group is up), and travel with it to the
  workers: a DataLoader worker started by ``spawn`` or ``forkserver`` (macOS, Linux from Python 3.14) has no
  process group and would otherwise take itself for rank 0 of 1;
- workers: batches are loaded and collated in the DataLoader's workers, worker ``k`` taking every
  ``num_workers``-th batch, which keeps the plan's order;
- pools: when a measure declares its sample size (RSA, kNN: ``measure.<name>.n``), the plan's batches are the
  units of a :class:`~vvm.cka.pools.PassPlan` (``layout``): pools of ``n`` examples, then the leftover, each cut
  by the engine into CKA's balanced batches. A pool is a batch of the plan, so it is dealt to one rank whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from vvm.cka.pools import PassPlan, plan_pass

IGNORE_LABEL = -100  # cross-entropy's ignore_index: a masked (padding) batch's labels


@contextlib.contextmanager
def exact_length() -> Iterator[None]:
    """Lightning warns that an IterableDataset's ``__len__`` may be wrong with several workers: EvalBatches
    shards its batches by worker itself (see ``__iter__``), so its length is exact. Silence that one warning
    while a Trainer runs over EvalBatches (no process-wide filter)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*IterableDataset. has .__len__. defined", category=UserWarning
        )
        yield


def permutation(n: int, seed: int, shuffle: bool = True) -> list[int]:
    """A seeded random order of ``range(n)`` (the identity when ``shuffle`` is false)."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g).tolist()


def balanced_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """Cut ``order`` into ``ceil(N / batch_size)`` consecutive batches whose sizes differ by at most one."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    n = len(order)
    if n == 0:
        return []
    nb = math.ceil(n / batch_size)
    base, extra = divmod(n, nb)
    out, start = [], 0
    for b in range(nb):
        size = base + (1 if b < extra else 0)
        out.append(order[start : start + size])
        start += size
    return out


def pooled_plan(
    order: list[int], batch_size: int, pool_size: int | None
) -> tuple[list[list[int]], PassPlan | None]:
    """The batches of a pass over ``order``: CKA's balanced batches (no pooled measure: ``pool_size=None``), or
    the units of a :class:`~vvm.cka.pools.PassPlan` of pools of ``pool_size`` examples and the leftover."""
    if pool_size is None:
        return balanced_batches(order, batch_size), None
    layout = plan_pass(len(order), batch_size, pool_size)
    units, start = [], 0
    for size in layout.unit_sizes:
        units.append(order[start : start + size])
        start += size
    return units, layout


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (``(0, 1)`` without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EvalBatches(IterableDataset):
    """Whole batches of ``dataset`` in the order of ``plan`` (lists of indices), this rank's share.

    Yields collated ``(images, labels)``; a padding batch has every label set to :data:`IGNORE_LABEL`.
    ``batch_info(i)`` tells the caller the global id of this rank's ``i``-th batch and whether it is padding.
    ``rank``/``world``: this process's shard; by default read from the process group when the object is made,
    so make it in the process that runs the model (never in a DataLoader worker). ``layout``: the
    :class:`~vvm.cka.pools.PassPlan` when the plan's batches are pools (see the module docstring).
    """

    def __init__(
        self,
        dataset: Dataset,
        plan: list[list[int]],
        *,
        name: str = "",
        rank: int | None = None,
        world: int | None = None,
        layout: PassPlan | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.plan = plan
        self.layout = layout
        self.name = name
        if rank is None or world is None:
            found = rank_and_world()
            rank = found[0] if rank is None else rank
            world = found[1] if world is None else world
        if not 0 <= int(rank) < int(world):
            raise ValueError(f"rank={rank} must be in [0, world={world})")
        # decided here, in the main process, and pickled into the workers with the object
        self.rank, self.world = int(rank), int(world)

    @property
    def n_examples(self) -> int:
        return sum(len(b) for b in self.plan)

    def cka_plan(self) -> list[list[int]]:
        """CKA's batches: the plan's, or with pools each unit's balanced batches."""
        if self.layout is None:
            return self.plan
        return [unit[a:b] for u, unit in enumerate(self.plan) for a, b, _ in self.layout.cka_batches(u)]

    def pools(self) -> list[list[int]]:
        """The pools of the pooled measures (without a layout: every batch is one)."""
        return self.plan if self.layout is None else self.plan[: self.layout.pools]

    def _hash(self, batches: list[list[int]]) -> str:
        h = hashlib.sha256(f"{self.name}|{len(self.dataset)}|".encode())
        for b in batches:
            h.update((",".join(map(str, b)) + ";").encode())
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        """A hash of CKA's batches (which examples meet in which batch) and the split's size: two passes with
        the same fingerprint ran the same batches, so their per-batch values can be paired."""
        return self._hash(self.cka_plan())

    def pool_fingerprint(self) -> str:
        """The same for the pools of the pooled measures (RSA, kNN): the same pools whatever ``similarity.batch_size``."""
        return self._hash(self.pools())

    def _share(self) -> list[int | None]:
        """Global batch ids this rank runs, in order (``None``: a masked padding batch)."""
        rank, world = self.rank, self.world
        per_rank = math.ceil(len(self.plan) / world) if self.plan else 0
        return [b if b < len(self.plan) else None for b in range(rank, per_rank * world, world)]

    def batch_info(self, i: int) -> tuple[int, bool]:
        """``(global batch id, is padding)`` of this rank's ``i``-th batch."""
        b = self._share()[i]
        return (0, True) if b is None else (b, False)

    def __len__(self) -> int:
        return len(self._share())

    def _load(self, b: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.plan[0 if b is None else b]
        batch = default_collate([self.dataset[i] for i in idx])
        if b is None:
            images, labels = batch[0], batch[1]
            return images, torch.full_like(torch.as_tensor(labels), IGNORE_LABEL)
        return batch

    def __iter__(self):
        share = self._share()
        info = get_worker_info()
        k, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for j in range(k, len(share), nw):
            yield self._load(share[j])
