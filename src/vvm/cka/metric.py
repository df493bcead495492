"""HSICMetric: the float64 sums behind minibatch CKA, as a torchmetrics Metric (states, update, compute).

Minibatch CKA (Nguyen, Raghu & Kornblith 2021), with each batch weighted by its size ``w_b = n_b``::

    CKA_ij = Σ_b w_b HSIC(K_b,i, L_b,j) / sqrt(Σ_b w_b HSIC(K_b,i, K_b,i) · Σ_b w_b HSIC(L_b,j, L_b,j))

Equal batches get equal weights (the paper's estimator); a small ragged batch counts in proportion to the
examples it holds instead of as much as a full one. Every state is float64 with ``dist_reduce_fx="sum"``, so
under DDP each rank feeds its own batches and ``compute()`` adds them up. Per-batch values are kept in
preallocated states indexed by the global batch id when ``max_batches`` is known (each batch is written by the
one rank that ran it; the others hold zeros there), so they too are summed across ranks.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from vvm.cka.batch_sums import LayerPairMetric, Shapes
from vvm.cka.functional import (
    Estimator,
    centre_kernel,
    check_estimator,
    cka_from_hsic,
    delta_stderr,
    hsic_normaliser,
    min_samples,
)
from vvm.cka.precision import PRECISIONS, check_precision, matmul_precision, sealed  # noqa: F401 - PRECISIONS: its old home
from vvm.cka.result import CKAResult

_MATRIX_SUMS = ("hsic_xy", "sum_aa", "sum_ab", "sum_ac", "sum_bc")
_X_SUMS = ("hsic_xx", "sum_bb")
_Y_SUMS = ("hsic_yy", "sum_cc")


class HSICMetric(LayerPairMetric):
    """Sums of per-batch HSIC between ``L_x`` row kernels and ``L_y`` column kernels, and their CKA.

    ``update(kx, ky)`` takes one batch's kernel stacks (``[L_x, n, n]``, ``[L_y, n, n]``; ``ky=None`` when the
    columns are the rows: a symmetric matrix from one product). ``compute()`` returns a :class:`CKAResult`.
    Subclasses (``StreamingCKA``, ``JointCKA``) add the recorder that makes the kernels from forward hooks.
    """

    def __init__(
        self,
        layers_x: list[str],
        layers_y: list[str] | None = None,
        *,
        kernel: str = "linear",
        estimator: Estimator = "unbiased",
        precision: str = "exact",
        max_batches: int | None = None,
        block_layers: int | None = None,
        kernel_facts: dict[str, object] | None = None,
        **kwargs,
    ) -> None:
        check_estimator(estimator)
        check_precision(precision)
        if block_layers is not None and block_layers < 1:
            raise ValueError(f"block_layers={block_layers} must be at least 1 (or None: one product)")
        self.kernel = kernel
        self.estimator = estimator
        self.precision = precision
        # centre and multiply in blocks of this many layers (None: the whole stack at once), see _blocked_hsic
        self.block_layers = block_layers
        super().__init__(layers_x, layers_y, max_batches=max_batches, **kwargs)
        # what the result records of the kernel besides its name (RBF: its bandwidth rule), from the kernel
        self.kernel_facts = dict(kernel_facts or {})
        self.sigma2: dict[str, Tensor | None] = {"x": None, "y": None}
        self._warned_undefined: set[str] = set()

    # ------------------------------------------------------------------ states
    def sum_shapes(self, lx: int, ly: int) -> Shapes:
        """Σ w·HSIC (``hsic_*``) and the sums of squares and products the delta method needs (``sum_*``); the
        total weight is ``n_samples`` (each batch weighs its size)."""
        return {
            **{n: (lx, ly) for n in _MATRIX_SUMS},
            **{n: (lx,) for n in _X_SUMS},
            **{n: (ly,) for n in _Y_SUMS},
        }

    def batch_shapes(self, lx: int, ly: int) -> Shapes:
        """Per batch: the cross HSICs ``a`` and the self HSICs ``b`` (rows) and ``c`` (columns)."""
        return {"a": (lx, ly), "b": (lx,), "c": (ly,)}

    @property
    def work_dtype(self) -> torch.dtype:
        """float64 for U-centring and the products in exact mode, float32 in fast mode."""
        return torch.float64 if self.precision == "exact" else torch.float32

    # ------------------------------------------------------------------ update
    def update(
        self, kx: Tensor, ky: Tensor | None = None, *, batch_id: int | None = None, overwrite: bool = False
    ) -> None:
        """Add one batch from its kernel matrices: ``kx`` ``[L_x, n, n]``; ``ky`` ``[L_y, n, n]`` or ``None``
        when the y layers are the x layers. ``batch_id``: the batch's global index (default: a counter).
        ``overwrite``: with ``block_layers``, the caller's stacks may be centred in place (no second copy)."""
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
        batch_id = self.next_batch_id(batch_id)
        if n < min_samples(self.estimator):
            warnings.warn(
                f"CKA: skipped a batch of {n} examples: the {self.estimator} estimator needs at least "
                f"{min_samples(self.estimator)}",
                stacklevel=2,
            )
            return
        if self.hsic_xy.device != kx.device:
            self.to(kx.device)
        big = max(kx.shape[0], 0 if ky is None else ky.shape[0])
        if self.block_layers is not None and big > self.block_layers:
            a, b, c = self._blocked_hsic(kx, ky, n, overwrite)
        else:
            a, b, c = self._batch_hsic(kx, ky, n)
        self._accumulate(a, b, c, float(n), batch_id)

    def _batch_hsic(self, kx: Tensor, ky: Tensor | None, n: int) -> tuple[Tensor, Tensor, Tensor]:
        dtype = self.work_dtype
        norm = hsic_normaliser(n, self.estimator)
        with sealed(kx.device.type), matmul_precision(self.precision == "fast"):
            # a new stack: the caller's is kept (the joint pass retries it in blocks after an out-of-memory error)
            gx = centre_kernel(kx.to(dtype), self.estimator, inplace=kx.dtype != dtype).reshape(
                kx.shape[0], -1
            )
            if ky is None:
                a = (gx @ gx.T) / norm
                b = c = a.diagonal()
            else:
                gy = centre_kernel(ky.to(dtype), self.estimator, inplace=ky.dtype != dtype)
                gy = gy.reshape(ky.shape[0], -1)
                a = (gx @ gy.T) / norm
                b = (gx * gx).sum(dim=-1) / norm
                c = (gy * gy).sum(dim=-1) / norm
        return a.double(), b.double(), c.double()

    def _centred_rows(self, k: Tensor, overwrite: bool) -> Tensor:
        """``G`` ``[L, n²]``: the centred kernels, ``block_layers`` at a time (into ``k`` itself when allowed)."""
        dtype, step = self.work_dtype, int(self.block_layers or k.shape[0])
        in_place = overwrite and k.dtype == dtype and k.is_contiguous()
        g = k if in_place else torch.empty(k.shape, dtype=dtype, device=k.device)
        for i in range(0, k.shape[0], step):
            if in_place:
                centre_kernel(k[i : i + step], self.estimator, inplace=True)
            else:
                g[i : i + step] = centre_kernel(k[i : i + step].to(dtype), self.estimator)
        return g.reshape(k.shape[0], -1)

    def _blocked_hsic(
        self, kx: Tensor, ky: Tensor | None, n: int, overwrite: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_batch_hsic` in blocks of ``block_layers`` layers: the centring's temporaries are one block,
        not the whole stack; ``a`` is filled one block of rows at a time. Same values up to rounding."""
        norm = hsic_normaliser(n, self.estimator)
        step = int(self.block_layers or kx.shape[0])
        with sealed(kx.device.type), matmul_precision(self.precision == "fast"):
            gx = self._centred_rows(kx, overwrite)
            gy = gx if ky is None else self._centred_rows(ky, overwrite)
            a = torch.empty(gx.shape[0], gy.shape[0], dtype=gx.dtype, device=gx.device)
            for i in range(0, gx.shape[0], step):
                a[i : i + step] = gx[i : i + step] @ gy.T
            a /= norm
            if ky is None:
                b = c = a.diagonal()
            else:
                b, c = (torch.cat([(r * r).sum(-1) for r in g.split(step)]) / norm for g in (gx, gy))
        return a.double(), b.double(), c.double()

    def _accumulate(self, a: Tensor, b: Tensor, c: Tensor, w: float, batch_id: int) -> None:
        self.hsic_xy += w * a
        self.hsic_xx += w * b
        self.hsic_yy += w * c
        w2 = w * w
        self.sum_aa += w2 * a * a
        self.sum_ab += w2 * a * b[:, None]
        self.sum_ac += w2 * a * c[None, :]
        self.sum_bc += w2 * b[:, None] * c[None, :]
        self.sum_bb += w2 * b * b
        self.sum_cc += w2 * c * c
        self.n_batches += 1
        self.n_samples += w
        self.keep_batch(batch_id, w, a=a, b=b, c=c)

    # ------------------------------------------------------------------ result
    def compute(self) -> CKAResult:
        """CKA matrix and its delta-method standard error (see :func:`vvm.cka.functional.delta_stderr`)."""
        nb = int(self.n_batches.item())
        W = float(self.n_samples.item())  # the batches' weights are their sizes
        matrix = cka_from_hsic(self.hsic_xy, self.hsic_xx, self.hsic_yy)
        sums = {
            "aa": self.sum_aa,
            "bb": self.sum_bb,
            "cc": self.sum_cc,
            "ab": self.sum_ab,
            "ac": self.sum_ac,
            "bc": self.sum_bc,
            "b": self.hsic_xx,
            "c": self.hsic_yy,
        }
        stderr = delta_stderr(matrix, sums, W, nb)
        if self._symmetric and nb >= 2:
            stderr.fill_diagonal_(0.0)  # CKA of a layer with itself is 1 in every batch: no spread
            stderr = stderr.masked_fill(torch.isnan(matrix), float("nan"))
        mean_w = W if W > 0 else 1.0
        per_batch = {}
        kept = self.kept_batches()
        if kept is not None:
            ids, v = kept
            per_batch = {
                "batch_ids": ids,
                "batch_weights": v["w"],
                "batch_hsic_xy": v["a"],
                "batch_hsic_xx": v["b"],
                "batch_hsic_yy": v["c"],
            }
        sig = {k: (None if v is None else v.detach().double().cpu()) for k, v in self.sigma2.items()}
        res = CKAResult(
            **self.result_fields(matrix, stderr),
            hsic_xx=(self.hsic_xx / mean_w).detach().cpu().clone(),
            hsic_yy=(self.hsic_yy / mean_w).detach().cpu().clone(),
            kernel=self.kernel,
            estimator=self.estimator,
            **self.kernel_facts,
            rbf_sigma2_x=sig.get("x"),
            rbf_sigma2_y=sig.get("x") if self._symmetric else sig.get("y"),
            **per_batch,
        )
        self._warn_undefined(res)
        return res

    def _warn_undefined(self, res: CKAResult) -> None:
        """One warning per layer, the first time it is found undefined: NaN means "no CKA", never 0."""
        nan = {
            n
            for n, h in [*zip(res.layers_x, res.hsic_xx.tolist()), *zip(res.layers_y, res.hsic_yy.tolist())]
            if h != h
        }  # non-finite features: the recorder's warning names them
        fresh = [n for n in res.undefined_x + res.undefined_y if n not in self._warned_undefined | nan]
        if fresh and res.n_batches > 0:
            self._warned_undefined.update(fresh)
            warnings.warn(
                "CKA is undefined (NaN) for layers whose self-similarity is zero, e.g. constant outputs: "
                f"{', '.join(dict.fromkeys(fresh))}",
                stacklevel=3,
            )
