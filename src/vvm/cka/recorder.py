"""KernelRecorder: forward hooks that turn tracked layers' outputs into per-batch kernel matrices.

Each hook turns its layer's output into the layer's linear Gram at once (features centred first), so no
activation outlives its hook. When every tracked model has finished its forward pass on the batch, the
recorder checks the kernels, and hands them to its owner (a CKA metric) as ``{model: {layer: kernel}}``.

What the hooks guarantee:
- their arithmetic is sealed: autocast is off and TF32 follows the precision mode, whatever the caller's context
  (a bf16-mixed fit, ``set_float32_matmul_precision``); low-precision activations are recorded and warned about;
- a module that runs k times per forward pass gives k layers (``name#0`` .. ``name#k-1``), learnt on the first
  batch; every later batch must run the same graph;
- non-finite features (NaN, inf) make a layer undefined, with a warning naming the layer and the batch when the
  pass ends (:meth:`track`'s exit; the owner's ``compute()`` gives NaN for its row and column): the check runs
  on the device and the host reads its one result then, so a CUDA pass never waits for the device per batch; a batch below the estimator's minimum
  size is skipped with a warning (the owner hears of it through ``on_skip``: under DDP it still has to join the
  collectives of a first batch); a masked batch (DDP padding) is computed but handed on as masked.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from vvm.cka.functional import RawParts, linear_gram, representation
from vvm.cka.precision import LOW_PRECISION, cpu_threads, matmul_precision, sealed

# column-block sizes (elements) for the centred Gram: ~1 MiB blocks stay in a CPU's L2 cache; on CUDA only
# activations above 64M elements (256 MiB in float32) are split, to bound the extra memory
CPU_CHUNK_ELEMENTS = 1 << 18
CUDA_CHUNK_ELEMENTS = 1 << 26
# the largest float32 Gram entry allowed before a layer's Gram moves to float64 (float32 overflows at 2**128)
FLOAT32_GRAM_LIMIT = 2.0**100
# intra-op threads for a hook's Gram on a CPU (None: torch's setting); see docs/benchmarks.md for the measurement
CPU_GRAM_THREADS: int | None = None

# the row block of a pool's Gram (pooled measures): blocks on and below the diagonal only, mirrored
POOL_ROW_BLOCK = 128

BatchKernels = dict[str, dict[str, Tensor]]
BatchParts = dict[str, dict[str, RawParts]]


def first_tensor(out: object, layer: str = "?") -> Tensor:
    """The representation in a module's output (:func:`~vvm.cka.functional.representation`), or an error."""
    t = representation(out)
    if t is None:
        raise TypeError(
            f"tracked layer {layer!r} returned {type(out).__name__} with no tensor that has a batch dimension: "
            "CKA needs [n, ...] outputs; drop the layer from the layer list"
        )
    return t


def layer_gram(
    output: Tensor, *, tf32: bool, raw: bool = False, row_blocks: int = 1, float64: bool = False
) -> Tensor | tuple[Tensor, RawParts]:
    """The float32 linear Gram of one layer's output (features centred first), autocast off; ``float64``: in
    float64 (features too large to square in float32); ``raw``: with the :class:`~vvm.cka.functional.RawParts`
    that rebuild the Gram of the raw features; ``row_blocks``: see :func:`~vvm.cka.functional.linear_gram`."""
    x = output.detach().reshape(output.shape[0], -1)
    if float64:
        x = x.double()
    elif x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    # CPU: centre and multiply in cache-sized column blocks; CUDA: whole activations unless one is huge
    on_cpu = x.device.type == "cpu"
    chunk = CPU_CHUNK_ELEMENTS if on_cpu else CUDA_CHUNK_ELEMENTS
    with sealed(x.device.type), matmul_precision(tf32), cpu_threads(CPU_GRAM_THREADS if on_cpu else None):
        return linear_gram(x, chunk_elements=chunk, raw=raw, row_blocks=row_blocks)


def needs_float64(output: Tensor, layer: str) -> bool:
    """Whether ``layer``'s Gram must be computed in float64: its features are so large (a Gram entry is at most
    ``max|x|² · d``) that a float32 Gram would overflow, or come within 2**28 of it (room for the pass's later
    batches). Decided once per layer, on its first batch (one host read); CKA, RSA and kNN do not depend on the
    features' scale, so the float64 Gram gives the result a float32 one would have given without overflow."""
    if output.dtype == torch.float64:
        return False
    lo, hi = torch.aminmax(output.detach())  # no |x| copy of the activation: the pass's peak memory stays put
    peak = float(torch.stack([lo, hi]).abs().max())
    d = output[0].numel()
    if not math.isfinite(peak) or peak * peak * d < FLOAT32_GRAM_LIMIT:
        return False  # small enough; NaN or inf are the finiteness check's to report
    warnings.warn(
        f"CKA: layer {layer!r} has features up to {peak:.2g}, too large to square in float32: its Gram is computed "
        "in float64. Features this large in a trained model mean that the training diverged: train it again "
        "with train.gradient_clip_val=1.0 (or a smaller train.lr)",
        stacklevel=3,
    )
    return True


def _check_disjoint(models: dict[str, nn.Module], modules: dict[str, list[str]]) -> None:
    """No tracked module of one model may belong to another: its hooks would fire when either runs, so every
    batch would be recorded twice (one network under two names) or mixed up (a shared submodule)."""
    if len(models) < 2:
        return
    members = {key: {id(m) for m in net.modules()} for key, net in models.items()}
    for key, net in models.items():
        named = dict(net.named_modules())
        for name in ("", *modules[key]):
            for other in models:
                if other != key and id(named[name]) in members[other]:
                    if models[key] is models[other]:
                        what = f"models {key!r} and {other!r} are the same network (one object)"
                    else:
                        what = f"{f'module {name!r} of ' if name else ''}model {key!r} is part of model {other!r}"
                    raise ValueError(
                        f"{what}: its hooks would fire for both, so every batch would count twice. To compare a "
                        "network with itself pass a copy (copy.deepcopy(model)) under the second name, or track "
                        "it once"
                    )


class KernelRecorder:
    """Hooks on the named modules of one or more models; per batch, one linear Gram per layer.

    Args:
        models: ``{key: network}``; every batch must go through each network once.
        modules: ``{key: module names}`` to hook in each network.
        on_batch: called after every batch with ``(kernels, masked, batch_id)``; ``kernels[key][layer]``.
        min_n: batches with fewer examples are skipped with a warning, and ``on_skip(batch_id)`` is called
            instead of ``on_batch`` (after :attr:`layers` is known).
        tf32: fast mode (TF32 Grams on CUDA).
        out_dtype: the dtype the Grams are handed on in.
        raw: also hand on, per layer, the :class:`~vvm.cka.functional.RawParts` that rebuild the Gram of the
            raw (uncentred) features, as ``on_batch(..., raw={key: {layer: parts}})`` (a measure that needs
            cosine similarities of the features as they are asks for them).
        min_reason: what needs ``min_n`` examples, for the warning when a batch is skipped.
        pooled: the batches are pools of a :class:`~vvm.cka.pools.PassPlan` (hundreds of examples): their Grams
            are computed as a lower triangle of row blocks and mirrored (half the work; CKA alone: the full
            product, as before).
        float64: the Grams are computed from the activations in float64 (rank-sensitive measures); without it, a
            layer whose features are too large to square in float32 still gets a float64 Gram
            (:func:`needs_float64`).
        features: also hand on every layer's flattened activations ``[n, d]`` (detached, as recorded) as
            ``on_batch(..., features={key: {layer: x}})``: they are held until the batch is handed on.
    """

    def __init__(
        self,
        models: dict[str, nn.Module],
        modules: dict[str, list[str]],
        on_batch: Callable[[BatchKernels, bool, int], None],
        *,
        min_n: int,
        tf32: bool,
        out_dtype: torch.dtype,
        on_skip: Callable[[int], None] | None = None,
        raw: bool = False,
        min_reason: str = "the estimator",
        pooled: bool = False,
        float64: bool = False,
        features: bool = False,
    ) -> None:
        _check_disjoint(models, modules)
        self.raw = raw
        self.pooled = pooled
        self.float64, self.features = float64, features
        self.min_reason = min_reason
        self.models = models
        self.modules = modules
        self.on_batch = on_batch
        self.on_skip = on_skip
        self.min_n = min_n
        self.tf32 = tf32
        self.out_dtype = out_dtype
        self.layers: dict[str, list[str]] | None = None  # expanded names (name#i), learnt on the first batch
        self._calls_per_batch: dict[tuple[str, str], int] | None = None
        self.activation_dtypes: set[str] = set()
        self._warned_low = False
        self._active = False
        self._batch_count = 0
        self._next_id: int | None = None
        self._mask_next = False
        # per recorded layer, the first batch whose features were not finite (-1: none yet), on the device
        self._first_nonfinite: Tensor | None = None
        self._recorded: list[tuple[str, str]] = []
        self._float64: dict[tuple[str, str, int], bool] = {}  # per layer: Gram in float64 (huge features)
        self._warned_nonfinite: set[tuple[str, str]] = set()
        self._reset_batch()

    # ------------------------------------------------------------------ control from the owner's caller
    def mask_next_batch(self) -> None:
        """The next batch is padding (a DDP rank with no batch left): compute it, add nothing."""
        self._mask_next = True

    def set_next_batch_id(self, batch_id: int) -> None:
        """The global index of the next batch (default: batches are numbered in the order they arrive)."""
        self._next_id = int(batch_id)

    # ------------------------------------------------------------------ hooks
    def _reset_batch(self) -> None:
        self._kernels: dict[tuple[str, str, int], Tensor] = {}
        self._parts: dict[tuple[str, str, int], RawParts] = {}
        self._feats: dict[tuple[str, str, int], Tensor] = {}
        self._calls: dict[tuple[str, str], int] = {}
        self._finished = {key: False for key in self.models}
        self._batch_n: int | None = None
        self._skip = False

    def _make_hook(self, key: str, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            call = self._calls.get((key, name), 0)
            self._calls[(key, name)] = call + 1
            t = first_tensor(output, name)
            n = t.shape[0]
            if self._batch_n is None:
                self._batch_n = n
            elif n != self._batch_n:
                raise RuntimeError(
                    f"layer {name!r} saw {n} examples but other layers saw {self._batch_n}: all tracked layers "
                    "(and all models) must see the same batch"
                )
            if n < self.min_n:
                self._skip = True
                return
            self._note_dtype(t.dtype)
            if self.features:
                self._feats[(key, name, call)] = t.detach().reshape(n, -1)
            if (key, name, call) not in self._float64:  # decided on the layer's first batch
                self._float64[(key, name, call)] = needs_float64(t, name) or self.float64
            # a pool's Gram (hundreds of examples): the lower triangle in row blocks of about 128, mirrored
            blocks = max(1, n // POOL_ROW_BLOCK) if self.pooled else 1
            gram = layer_gram(
                t, tf32=self.tf32, raw=self.raw, row_blocks=blocks, float64=self._float64[(key, name, call)]
            )
            if isinstance(gram, tuple):
                gram, self._parts[(key, name, call)] = gram
            self._kernels[(key, name, call)] = gram.to(self.out_dtype)

        return hook

    def _note_dtype(self, dtype: torch.dtype) -> None:
        self.activation_dtypes.add(str(dtype).removeprefix("torch."))
        if dtype in LOW_PRECISION and not self._warned_low:
            self._warned_low = True
            warnings.warn(
                f"CKA: tracked layers produce {dtype} activations (autocast or a low-precision model); the "
                "kernels are computed exactly from them, but the representations themselves are rounded: run "
                "the CKA pass in float32 for float32 representations",
                stacklevel=3,
            )

    def _make_root_hook(self, key: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if self._finished[key]:
                raise RuntimeError(
                    f"model {key!r} ran twice before every other model saw the batch: call each model once "
                    "per batch"
                )
            self._finished[key] = True
            if all(self._finished.values()):
                self._end_batch()

        return hook

    @contextlib.contextmanager
    def track(self) -> Iterator[KernelRecorder]:
        """Register the forward hooks for the duration of the block; they are removed on exit."""
        if self._active:
            raise RuntimeError("track() is already active on this metric: hooks would be registered twice")
        handles = []
        try:
            for key, net in self.models.items():
                named = dict(net.named_modules())
                for name in self.modules[key]:
                    handles.append(named[name].register_forward_hook(self._make_hook(key, name)))
                handles.append(net.register_forward_hook(self._make_root_hook(key)))
            self._active = True
            self._reset_batch()
            yield self
            self.check_finite()
        finally:
            for h in handles:
                h.remove()
            self._active = False
            if len(self.models) > 1 and any(self._finished.values()) and self._kernels:
                warnings.warn(
                    "CKA: the last batch was seen by only some of the models and was dropped", stacklevel=3
                )
            self._reset_batch()

    # ------------------------------------------------------------------ per batch
    def _learn_structure(self) -> None:
        """On the first batch: which modules ran, and how often (a module that runs k times gives k layers)."""
        layers: dict[str, list[str]] = {}
        for key in self.models:
            out: list[str] = []
            for name in self.modules[key]:
                c = self._calls.get((key, name), 0)
                if c == 0:
                    raise RuntimeError(
                        f"layer {name!r} did not run in the forward pass, so it has no representation: "
                        "drop it from similarity.layers"
                    )
                if c > 1:
                    warnings.warn(
                        f"CKA: module {name!r} runs {c} times per forward pass; recording each call as "
                        f"{name}#0 .. {name}#{c - 1}",
                        stacklevel=4,
                    )
                out.extend([f"{name}#{i}" for i in range(c)] if c > 1 else [name])
            layers[key] = out
        self._calls_per_batch = dict(self._calls)
        self.layers = layers

    def _collect(self, found: dict[tuple[str, str, int], Any]) -> dict[str, dict[str, Any]]:
        """``{model: {layer: what the hooks found}}`` (Grams or their raw parts), layers in recorded order."""
        assert self._calls_per_batch is not None and self.layers is not None
        out: dict[str, dict[str, Any]] = {}
        for key in self.models:
            per: dict[str, Any] = {}
            for name in self.modules[key]:
                c = self._calls_per_batch[(key, name)]
                for i in range(c):
                    per[f"{name}#{i}" if c > 1 else name] = found[(key, name, i)]
            out[key] = per
        return out

    def _note_finite(self, kernels: BatchKernels, batch_id: int) -> None:
        """Mark the layers whose Gram has a non-finite diagonal (non-finite features, or features too large to
        square) in this batch, on the device: no host synchronisation (:meth:`check_finite` reads the marks)."""
        diag = torch.stack([k.diagonal() for per in kernels.values() for k in per.values()])
        bad = ~torch.isfinite(diag).all(dim=-1)
        if self._first_nonfinite is None:
            self._recorded = [(key, name) for key, per in kernels.items() for name in per]
            self._first_nonfinite = torch.full_like(bad, -1, dtype=torch.long)
        first = self._first_nonfinite
        self._first_nonfinite = torch.where(bad & (first < 0), batch_id, first)

    def nonfinite(self) -> dict[str, dict[str, int]]:
        """``{model key: {layer: first batch}}`` of the layers whose features were NaN or inf (one host read)."""
        if self._first_nonfinite is None:
            return {}
        out: dict[str, dict[str, int]] = {}
        for (key, name), batch_id in zip(self._recorded, self._first_nonfinite.tolist()):
            if batch_id >= 0:
                out.setdefault(key, {})[name] = batch_id
        return out

    def check_finite(self) -> dict[str, dict[str, int]]:
        """Warn once per layer, naming it and its first bad batch, when its features were NaN or inf: similarity is
        not defined for it, and its owner's results give NaN for its row and column. Returns :meth:`nonfinite`."""
        bad = self.nonfinite()
        for key, per in bad.items():
            for name, batch_id in per.items():
                if (key, name) in self._warned_nonfinite:
                    continue
                self._warned_nonfinite.add((key, name))
                who = f"model {key!r}, " if len(self.models) > 1 else ""
                warnings.warn(
                    f"CKA: layer {name!r} ({who}batch {batch_id}) has non-finite features (NaN or inf, or too large "
                    "to square even in float64): similarity is not defined for it, so its row and column are NaN; "
                    "check the model and its inputs, or drop the layer",
                    stacklevel=3,
                )
        return bad

    def _end_batch(self) -> None:
        masked, self._mask_next = self._mask_next, False
        batch_id = self._batch_count if self._next_id is None else self._next_id
        self._next_id = None
        self._batch_count += 1
        try:
            if self._calls_per_batch is None:
                self._learn_structure()
            elif self._calls != self._calls_per_batch:
                raise RuntimeError(
                    "the tracked modules ran a different number of times than on the first batch; CKA needs "
                    "the same computation graph for every batch"
                )
            if self._skip:
                warnings.warn(
                    f"CKA: skipped a batch of {self._batch_n} examples: {self.min_reason} needs at least "
                    f"{self.min_n}",
                    stacklevel=3,
                )
                if self.on_skip is not None:
                    self.on_skip(batch_id)
                return
            kernels: BatchKernels = self._collect(self._kernels)
            parts: BatchParts | None = self._collect(self._parts) if self.raw else None
            extra: dict[str, Any] = {"raw": parts} if parts is not None else {}
            if self.features:
                extra["features"] = self._collect(self._feats)
            self._kernels.clear()
            self._parts.clear()
            self._feats.clear()
            self._note_finite(kernels, batch_id)
            self.on_batch(kernels, masked, batch_id, **extra)
        finally:
            self._reset_batch()
