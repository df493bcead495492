"""StreamingCKA: minibatch CKA between every pair of layers, accumulated over batches by forward hooks.

Each hook turns its layer's output into the layer's kernel matrix at once (no activation outlives the hook);
when the forward pass of the model (and of ``other``, when two models are compared) has finished, the batch's
kernels are centred, stacked into ``G`` (``L x n²``) and one product ``G_x G_yᵀ`` gives every pair's HSIC.

Minibatch CKA (Nguyen, Raghu & Kornblith 2021)::

    CKA_ij = Σ_b HSIC(K_b,i, L_b,j) / sqrt(Σ_b HSIC(K_b,i, K_b,i) · Σ_b HSIC(L_b,j, L_b,j))

The sums are float64 metric states with ``dist_reduce_fx="sum"``, so under DDP every rank feeds its own batches
and ``compute()`` sums over ranks. Along with them go the sums of squares and cross products of the per-batch
HSIC values, from which ``compute()`` derives a delta-method standard error of every entry (see
:meth:`StreamingCKA.compute`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from vvm.cka.functional import (
    Estimator,
    Kernel,
    centre_kernel,
    check_estimator,
    check_kernel,
    cka_from_hsic,
    hsic_normaliser,
    linear_gram,
    min_samples,
    rbf_from_linear,
)
from vvm.cka.layers import LayerSpec, resolve_layers

PRECISIONS = ("exact", "fast")
# column-block sizes (elements) for the centred Gram: ~1 MiB blocks stay in a CPU's L2 cache; on CUDA only
# activations above 64M elements (256 MiB in float32) are split, to bound the extra memory
CPU_CHUNK_ELEMENTS = 1 << 18
CUDA_CHUNK_ELEMENTS = 1 << 26

# per-batch HSIC values a (xy), b (xx), c (yy) and the sums that the delta method needs
_MATRIX_STATES = ("hsic_xy", "sum_aa", "sum_ab", "sum_ac", "sum_bc")
_X_STATES = ("hsic_xx", "sum_bb")
_Y_STATES = ("hsic_yy", "sum_cc")


class CKAResult:
    """What :meth:`StreamingCKA.compute` returns.

    ``matrix`` (float64 ``[L_x, L_y]``) holds CKA; ``stderr`` its delta-method standard error across batches
    (NaN with fewer than two batches); ``layers_x``/``layers_y`` name the rows and columns; ``undefined_x``/
    ``undefined_y`` list the layers whose self-HSIC sum is ≤ 0 (their rows/columns are NaN).
    """

    def __init__(
        self,
        matrix: Tensor,
        stderr: Tensor,
        layers_x: list[str],
        layers_y: list[str],
        n_samples: int,
        n_batches: int,
        hsic_xx: Tensor,
        hsic_yy: Tensor,
        kernel: str,
        estimator: str,
    ) -> None:
        self.matrix = matrix
        self.stderr = stderr
        self.layers_x = layers_x
        self.layers_y = layers_y
        self.n_samples = n_samples
        self.n_batches = n_batches
        self.hsic_xx = hsic_xx
        self.hsic_yy = hsic_yy
        self.kernel = kernel
        self.estimator = estimator
        self.undefined_x = [n for n, h in zip(layers_x, hsic_xx.tolist()) if not h > 0]
        self.undefined_y = [n for n, h in zip(layers_y, hsic_yy.tolist()) if not h > 0]

    def __repr__(self) -> str:
        return (
            f"CKAResult({len(self.layers_x)}x{len(self.layers_y)} layers, n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, kernel={self.kernel!r}, estimator={self.estimator!r})"
        )


def _first_tensor(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, Tensor):
                return item
    if isinstance(out, dict):
        for item in out.values():
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"a tracked layer returned {type(out).__name__}, which holds no tensor")


@contextlib.contextmanager
def _tf32(enabled: bool, device: torch.device) -> Iterator[None]:
    """Force (exact) or allow (fast) TF32 for float32 products on CUDA, restoring the user's setting."""
    if device.type != "cuda":
        yield
        return
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


class StreamingCKA(Metric):
    """Minibatch CKA between the layers of ``model`` (and of ``other``), streamed over batches.

    Args:
        model: the network whose layers are recorded (hooks go on its submodules).
        layers: module names, glob patterns or a preset (``blocks``, ``all``, ``seed``).
        other: a second network to compare with; it must see the same examples, batch by batch.
        other_layers: layers of ``other`` (or, without ``other``, a second layer set of ``model`` for a
            rectangular matrix); defaults to ``layers``.
        kernel: ``linear`` or ``rbf`` (median heuristic times ``rbf_frac``).
        estimator: ``unbiased`` (HSIC₁, minibatch CKA) or ``biased`` (HSIC₀, as the seed).
        precision: ``exact`` (float32 Gram of centred features without TF32, float64 from there on) or
            ``fast`` (TF32 Grams on CUDA, float32 centring and products; sums still float64).

    Usage::

        m = StreamingCKA(model, ["layer1", "layer2.0"])
        with m.track():
            for x in batches:
                model(x)
        res = m.compute()   # res.matrix, res.stderr, res.layers_x, res.layers_y, res.n_samples
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = "blocks",
        *,
        other: nn.Module | None = None,
        other_layers: LayerSpec | None = None,
        kernel: Kernel = "linear",
        estimator: Estimator = "unbiased",
        precision: str = "exact",
        rbf_frac: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_kernel(kernel)
        check_estimator(estimator)
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported: use one of {', '.join(PRECISIONS)}")
        if rbf_frac <= 0:
            raise ValueError(f"rbf_frac={rbf_frac} must be > 0")
        self.kernel = kernel
        self.estimator = estimator
        self.precision = precision
        self.rbf_frac = float(rbf_frac)
        # kept out of the module tree: moving or saving the metric must not move or save the networks
        self._nets: dict[str, nn.Module] = {"x": model, "y": other if other is not None else model}
        self._two_models = other is not None
        self._modules_x = resolve_layers(model, layers)
        y_spec = layers if other_layers is None else other_layers
        self._modules_y = resolve_layers(self._nets["y"], y_spec)
        # with one model and one layer set, the matrix is symmetric and G_y is G_x
        self._symmetric = not self._two_models and self._modules_y == self._modules_x
        self.layers_x: list[str] = list(self._modules_x)
        self.layers_y: list[str] = list(self._modules_y)
        self._calls_per_batch: dict[tuple[str, str], int] | None = None  # learnt on the first batch
        self._warned_undefined: set[str] = set()
        self._allocate_states()
        self._reset_batch()

    # ------------------------------------------------------------------ states
    def _allocate_states(self) -> None:
        lx, ly = len(self.layers_x), len(self.layers_y)
        f64 = torch.float64
        for name in _MATRIX_STATES:
            self.add_state(name, default=torch.zeros(lx, ly, dtype=f64), dist_reduce_fx="sum")
        for name in _X_STATES:
            self.add_state(name, default=torch.zeros(lx, dtype=f64), dist_reduce_fx="sum")
        for name in _Y_STATES:
            self.add_state(name, default=torch.zeros(ly, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n_batches", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("n_samples", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")

    @property
    def _work_dtype(self) -> torch.dtype:
        return torch.float64 if self.precision == "exact" else torch.float32

    # ------------------------------------------------------------------ hooks
    def _reset_batch(self) -> None:
        self._kernels: dict[tuple[str, str, int], Tensor] = {}
        self._calls: dict[tuple[str, str], int] = {}
        # with one model there is no second forward pass to wait for
        self._finished: dict[str, bool] = {"x": False, "y": not self._two_models}
        self._batch_n: int | None = None
        self._skip_batch = False

    def layer_kernel(self, output: Tensor) -> Tensor:
        """The kernel matrix of one layer's output for the current batch (features centred first)."""
        x = output.detach().reshape(output.shape[0], -1)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        # CPU: centre and multiply in cache-sized column blocks; CUDA: whole activations (one copy, few
        # kernel launches) unless one is huge
        chunk = CPU_CHUNK_ELEMENTS if x.device.type == "cpu" else CUDA_CHUNK_ELEMENTS
        with _tf32(self.precision == "fast", x.device):
            k = linear_gram(x, chunk_elements=chunk)
        k = k.to(self._work_dtype)
        if self.kernel == "rbf":
            k = rbf_from_linear(k, self.rbf_frac)
        return k

    def _tracked(self, side: str) -> list[str]:
        if self._two_models:
            return self._modules_x if side == "x" else self._modules_y
        return list(dict.fromkeys(self._modules_x + self._modules_y))

    def _make_hook(self, side: str, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            key = (side, name)
            call = self._calls.get(key, 0)
            self._calls[key] = call + 1
            t = _first_tensor(output)
            n = t.shape[0]
            if self._batch_n is None:
                self._batch_n = n
            elif n != self._batch_n:
                raise RuntimeError(
                    f"layer {name!r} saw {n} examples but other layers saw {self._batch_n}: all tracked layers "
                    "(and both models) must see the same batch"
                )
            if n < min_samples(self.estimator):
                self._skip_batch = True
                return
            self._kernels[(side, name, call)] = self.layer_kernel(t)

        return hook

    def _make_root_hook(self, side: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if self._finished[side]:
                raise RuntimeError(
                    "the first model ran twice before the other model saw the batch: call model(x) and other(x) "
                    "once each per batch"
                )
            self._finished[side] = True
            if all(self._finished.values()):
                self._end_batch()

        return hook

    @contextlib.contextmanager
    def track(self) -> Iterator[StreamingCKA]:
        """Register the forward hooks for the duration of the block; they are removed on exit."""
        handles = []
        sides = ("x", "y") if self._two_models else ("x",)
        try:
            for side in sides:
                net = self._nets[side]
                modules = dict(net.named_modules())
                for name in self._tracked(side):
                    handles.append(modules[name].register_forward_hook(self._make_hook(side, name)))
                handles.append(net.register_forward_hook(self._make_root_hook(side)))
            self._reset_batch()
            yield self
        finally:
            for h in handles:
                h.remove()
            if any(self._finished.values()) and self._two_models and self._kernels:
                warnings.warn(
                    "StreamingCKA: the last batch was seen by only one of the two models and was dropped",
                    stacklevel=2,
                )
            self._reset_batch()

    # ------------------------------------------------------------------ per batch
    def _learn_structure(self) -> None:
        """On the first batch: which modules ran, and how often (a module that runs k times gives k layers)."""
        calls = dict(self._calls)
        expanded: dict[str, list[str]] = {}
        for side in ("x", "y") if self._two_models else ("x",):
            for name in self._tracked(side):
                c = calls.get((side, name), 0)
                if c == 0:
                    raise RuntimeError(
                        f"layer {name!r} did not run in the forward pass, so it has no representation: "
                        "drop it from cka.layers"
                    )
                if c > 1:
                    expanded[f"{side}:{name}"] = [f"{name}#{i}" for i in range(c)]
                    warnings.warn(
                        f"StreamingCKA: module {name!r} runs {c} times per forward pass; recording each call "
                        f"as {name}#0 .. {name}#{c - 1}",
                        stacklevel=3,
                    )
        self._calls_per_batch = calls

        def expand(side: str, modules: list[str]) -> list[str]:
            key_side = side if self._two_models else "x"
            out: list[str] = []
            for m in modules:
                out.extend(expanded.get(f"{key_side}:{m}", [m]))
            return out

        self.layers_x = expand("x", self._modules_x)
        self.layers_y = expand("y", self._modules_y)
        if expanded:
            self._allocate_states()
            self.to(self.device)

    def _stack(self, side: str, modules: list[str]) -> Tensor:
        key_side = side if self._two_models else "x"
        assert self._calls_per_batch is not None
        mats = []
        for m in modules:
            for i in range(self._calls_per_batch[(key_side, m)]):
                mats.append(self._kernels[(key_side, m, i)])
        return torch.stack(mats)

    def _end_batch(self) -> None:
        try:
            if self._skip_batch:
                warnings.warn(
                    f"StreamingCKA: skipped a batch of {self._batch_n} examples: the {self.estimator} estimator "
                    f"needs at least {min_samples(self.estimator)}",
                    stacklevel=3,
                )
                return
            if self._calls_per_batch is None:
                self._learn_structure()
            elif self._calls != self._calls_per_batch:
                raise RuntimeError(
                    "the tracked modules ran a different number of times than on the first batch; "
                    "StreamingCKA needs the same computation graph for every batch"
                )
            kx = self._stack("x", self._modules_x)
            ky = None if self._symmetric else self._stack("y", self._modules_y)
            self._kernels.clear()  # free the per-batch kernels before the products
            self.update(kx, ky)
        finally:
            self._reset_batch()

    def update(self, kx: Tensor, ky: Tensor | None = None) -> None:
        """Add one batch from its kernel matrices: ``kx`` ``[L_x, n, n]``; ``ky`` ``[L_y, n, n]`` or ``None``
        when the y layers are the x layers. The hooks call this; call it yourself to feed precomputed kernels."""
        if kx.dim() != 3 or (ky is not None and ky.dim() != 3):
            raise ValueError("update() takes stacks of kernel matrices [L, n, n]")
        n = kx.shape[-1]
        if ky is not None and ky.shape[-1] != n:
            raise ValueError(f"x and y kernels are over different batches: n={n} and n={ky.shape[-1]}")
        if kx.shape[0] != len(self.layers_x) or (ky is not None and ky.shape[0] != len(self.layers_y)):
            raise ValueError(
                f"expected {len(self.layers_x)} x kernels and {len(self.layers_y)} y kernels, "
                f"got {kx.shape[0]} and {None if ky is None else ky.shape[0]}"
            )
        if n < min_samples(self.estimator):
            warnings.warn(
                f"StreamingCKA: skipped a batch of {n} examples: the {self.estimator} estimator needs at least "
                f"{min_samples(self.estimator)}",
                stacklevel=2,
            )
            return
        if self.hsic_xy.device != kx.device:
            self.to(kx.device)
        dtype = self._work_dtype
        norm = hsic_normaliser(n, self.estimator)
        gx = centre_kernel(kx.to(dtype), self.estimator).reshape(kx.shape[0], -1)
        if ky is None:
            a = (gx @ gx.T) / norm
            b = a.diagonal()
            c = b
        else:
            gy = centre_kernel(ky.to(dtype), self.estimator).reshape(ky.shape[0], -1)
            a = (gx @ gy.T) / norm
            b = (gx * gx).sum(dim=-1) / norm
            c = (gy * gy).sum(dim=-1) / norm
        a, b, c = a.double(), b.double(), c.double()
        self.hsic_xy += a
        self.hsic_xx += b
        self.hsic_yy += c
        self.sum_aa += a * a
        self.sum_ab += a * b[:, None]
        self.sum_ac += a * c[None, :]
        self.sum_bc += b[:, None] * c[None, :]
        self.sum_bb += b * b
        self.sum_cc += c * c
        self.n_batches += 1
        self.n_samples += n

    # ------------------------------------------------------------------ result
    def compute(self) -> CKAResult:
        """CKA matrix and its standard error.

        The standard error is the delta method applied to ``f(ā, b̄, c̄) = ā / sqrt(b̄ c̄)`` over the ``B``
        batches treated as independent draws: with gradient ``g = (1/sqrt(b̄c̄), -f/(2b̄), -f/(2c̄))`` the
        linearised per-batch value is ``z_b = g·(a_b, b_b, c_b)`` (its mean is exactly 0), and
        ``se = sqrt(Σ_b z_b² / ((B - 1) B))``. NaN with fewer than two batches or where CKA is undefined.
        """
        nb = int(self.n_batches.item())
        matrix = cka_from_hsic(self.hsic_xy, self.hsic_xx, self.hsic_yy)
        stderr = torch.full_like(matrix, math.nan)
        if nb >= 2:
            b_m = (self.hsic_xx / nb)[:, None]
            c_m = (self.hsic_yy / nb)[None, :]
            ga = 1.0 / torch.sqrt(b_m * c_m)
            gb = -matrix / (2 * b_m)
            gc = -matrix / (2 * c_m)
            ss = (
                ga * ga * self.sum_aa
                + gb * gb * self.sum_bb[:, None]
                + gc * gc * self.sum_cc[None, :]
                + 2 * ga * gb * self.sum_ab
                + 2 * ga * gc * self.sum_ac
                + 2 * gb * gc * self.sum_bc
            )
            # Σ z_b² is a sum of squares; the expanded form can round to about -eps·(its terms) when every
            # z_b is 0 (e.g. the diagonal of a symmetric matrix), which is 0, not an error
            # (absolute rounding error of the result: about sqrt(eps / B), i.e. 1e-8 and below)
            stderr = torch.sqrt(ss.clamp_min(0) / ((nb - 1) * nb))
            if self._symmetric:
                stderr.fill_diagonal_(0.0)  # CKA of a layer with itself is 1 in every batch: no spread
            stderr = stderr.masked_fill(torch.isnan(matrix), math.nan)
        res = CKAResult(
            matrix=matrix.detach().cpu(),
            stderr=stderr.detach().cpu(),
            layers_x=list(self.layers_x),
            layers_y=list(self.layers_y),
            n_samples=int(self.n_samples.item()),
            n_batches=nb,
            hsic_xx=self.hsic_xx.detach().cpu().clone(),
            hsic_yy=self.hsic_yy.detach().cpu().clone(),
            kernel=self.kernel,
            estimator=self.estimator,
        )
        fresh = [n for n in res.undefined_x + res.undefined_y if n not in self._warned_undefined]
        if fresh and nb > 0:
            self._warned_undefined.update(fresh)
            warnings.warn(
                "StreamingCKA: CKA is undefined (NaN) for layers whose self-similarity is zero, e.g. constant "
                f"outputs: {', '.join(dict.fromkeys(fresh))}",
                stacklevel=2,
            )
        return res
