"""What vvm's result metrics share (:class:`~vvm.cka.metric.HSICMetric` for CKA,
:class:`~vvm.cka.measures.mean.BatchMeanMetric` for the per-batch measures): float64 sums over batches for every
pair of ``L_x`` rows and ``L_y`` columns, summed across DDP ranks; the per-batch values by global batch id when
they fit in :data:`MAX_PER_BATCH_VALUES` (paired differences of two runs over the same batches), each batch id
counted once; and a ``compute()`` that returns a result object, synced across ranks, never squeezed or cached.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

# keep per-batch values (for paired differences) only up to this many numbers (64 MiB in float64)
MAX_PER_BATCH_VALUES = 1 << 23

Shapes = dict[str, tuple[int, ...]]


class LayerPairMetric(Metric):
    """Float64 states for ``layers_x`` rows and ``layers_y`` columns (``layers_y=None``: the columns are the
    rows, a symmetric matrix), all summed across ranks.

    Subclasses name their states by shape: :meth:`sum_shapes` (the running sums; ``n_batches`` and
    ``n_samples`` are added here) and :meth:`batch_shapes` (the values kept per batch, ``name`` held in the
    state ``batch_<name>`` ``[max_batches, *shape]``, with ``batch_w``, the batch's weight, added here); they add
    a batch with :meth:`next_batch_id` and :meth:`keep_batch`, and read the kept ones with :meth:`kept_batches`."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self, layers_x: list[str], layers_y: list[str] | None, *, max_batches: int | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_batches = max_batches
        self._symmetric = layers_y is None
        self.activation_dtypes: set[str] = set()  # filled in by the recorder that feeds it
        self.set_layers(layers_x, layers_x if layers_y is None else layers_y)

    def sum_shapes(self, lx: int, ly: int) -> Shapes:
        raise NotImplementedError

    def batch_shapes(self, lx: int, ly: int) -> Shapes:
        raise NotImplementedError

    def set_layers(self, layers_x: list[str], layers_y: list[str]) -> None:
        """(Re)allocate the states for these rows and columns (before the first update), on the metric's device:
        a rank that renames its layers on a padding batch (which never updates, so never moves the states) must
        still hold them where the all-gather of ``compute()`` expects them (NCCL: on the GPU)."""
        self.layers_x, self.layers_y = list(layers_x), list(layers_y)
        lx, ly = len(self.layers_x), len(self.layers_y)

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=self.device)

        for name, shape in {**self.sum_shapes(lx, ly), "n_batches": (), "n_samples": ()}.items():
            self.add_state(name, default=zeros(*shape), dist_reduce_fx="sum")
        nb, per_batch = self.max_batches, self.batch_shapes(lx, ly)
        self._keep_batches = (
            bool(nb) and nb * sum(math.prod(s) for s in per_batch.values()) <= MAX_PER_BATCH_VALUES
        )
        if self._keep_batches:
            for name, shape in {"w": (), **per_batch}.items():
                self.add_state(f"batch_{name}", default=zeros(int(nb or 0), *shape), dist_reduce_fx="sum")
        self._next_batch_id = 0
        self._added: set[int] = set()  # batch ids this process added (kept on the host: no device read)

    def reset(self) -> None:
        super().reset()
        self._next_batch_id = 0
        self._added = set()

    def next_batch_id(self, batch_id: int | None) -> int:
        """The batch's global id (``None``: one more than the last), remembered for the next call."""
        batch_id = self._next_batch_id if batch_id is None else int(batch_id)
        self._next_batch_id = batch_id + 1
        return batch_id

    def keep_batch(self, batch_id: int, weight: float, **values: Tensor) -> None:
        """The batch's weight and values (by their :meth:`batch_shapes` names) under its id, when the metric keeps
        per-batch values; a batch id outside ``max_batches`` or added twice is an error."""
        if not self._keep_batches:
            return
        if not 0 <= batch_id < int(self.max_batches or 0):
            raise ValueError(f"batch_id={batch_id} is outside max_batches={self.max_batches}")
        if batch_id in self._added:
            raise ValueError(f"batch {batch_id} was added twice: every example must count once")
        self._added.add(batch_id)
        self.batch_w[batch_id] = weight
        for name, value in values.items():
            getattr(self, f"batch_{name}")[batch_id] = value

    def kept_batches(self) -> tuple[Tensor, dict[str, Tensor]] | None:
        """``(ids, {name: values})`` of the batches kept (on the CPU; the weights as ``w``); None when the metric
        keeps none."""
        if not self._keep_batches:
            return None
        seen = torch.nonzero(self.batch_w > 0).flatten()
        names = ["w", *self.batch_shapes(1, 1)]
        return seen.cpu(), {n: getattr(self, f"batch_{n}")[seen].cpu() for n in names}

    def result_fields(self, matrix: Tensor, stderr: Tensor) -> dict[str, Any]:
        """The fields every result has (:class:`~vvm.cka.result.MatrixResult`'s, and ``activation_dtype``), on
        the CPU, for the subclass's ``compute()``."""
        return {
            "matrix": matrix.detach().cpu(),
            "stderr": stderr.detach().cpu(),
            "layers_x": list(self.layers_x),
            "layers_y": list(self.layers_y),
            "n_samples": int(round(self.n_samples.item())),
            "n_batches": int(self.n_batches.item()),
            "activation_dtype": ",".join(sorted(self.activation_dtypes)),
        }

    def _wrap_compute(self, compute: Callable) -> Callable:
        """torchmetrics' wrapper, less what does not fit a result object: it would squeeze a 1x1 matrix to a
        scalar and cache the first result. States are still synced across ranks for the call."""

        @functools.wraps(compute)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.sync_context(
                dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
            ):
                return compute(*args, **kwargs)

        return wrapped


__all__ = ["MAX_PER_BATCH_VALUES", "LayerPairMetric"]
