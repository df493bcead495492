"""JointCKA: minibatch CKA between every pair of layers of every pair of models, in one pass over the data.

Every batch goes through every model (each through its own preprocessing: the caller feeds each model, or calls
:meth:`JointCKA.feed`, which does). A :class:`~vvm.cka.recorder.KernelRecorder` with hooks on all the models turns
each tracked layer's output into its linear Gram once per batch; the Grams are stacked model after model into one
``[ΣL, n, n]`` stack and handed to :meth:`HSICMetric.update` as the symmetric case: U-centred into ``G``
(``ΣL x n²``), ONE product ``G Gᵀ`` gives every pair of layers of every pair of models. The diagonal blocks are
the models' own CKA matrices, the off-diagonal blocks cross-model CKA; the float64 states, standard errors, NaN
semantics and DDP reduction are :class:`HSICMetric`'s. Layers are named ``<model>/<layer>``.

Memory: per batch, besides the models, the stack (ΣL·n² numbers in the work dtype). The one-product path needs
one more copy of it, the centred stack; when that would not fit (``block_layers="auto"``: a quarter of the free
device memory, the allocator's cached free blocks included, checked every batch) the stack is centred in place
and multiplied in blocks of layers instead (:meth:`HSICMetric._blocked_hsic`), and an out-of-memory error in the
one-product path falls back to blocks (retried once the failed attempt is freed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from vvm.cka.bandwidth import Bandwidths
from vvm.cka.correspondence import best_matches, identification, layer_identification, mean_row_max
from vvm.cka.functional import Estimator, Kernel, check_kernel, min_samples
from vvm.cka.metric import HSICMetric, check_precision
from vvm.cka.presets import LayerSpec, resolve_layers
from vvm.cka.recorder import BatchKernels, KernelRecorder
from vvm.cka.result import CKAResult

SEP = "/"  # <model>/<layer>
# the one-product path holds the stack and its centred copy (u_centre works in place on the copy): 2 stacks
ONE_PRODUCT_COPIES = 2


def hook_target(model: nn.Module) -> nn.Module:
    """The network whose modules are hooked: ``model.net`` for a wrapper that preprocesses its inputs itself
    (vvm's ``VisionModel``: a ``net`` and a ``preprocess``), else ``model``."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) and callable(getattr(model, "preprocess", None)) else model


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: on CUDA the driver's free memory plus the blocks PyTorch's caching allocator
    holds but does not use (``memory_reserved - memory_allocated``: free for PyTorch, not for the driver), else
    the host's available memory (4 GiB if unknown)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def empty_cache(device: torch.device) -> None:
    """Give the blocks PyTorch's allocator caches on ``device`` back (CUDA; nothing elsewhere)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def not_fit_message(models: Mapping[str, nn.Module], device: object, what: str) -> str:
    params = sum(p.numel() for m in models.values() for p in m.parameters())
    return (
        f"the {len(models)} models do not fit on {device} together while {what} ({params:,} parameters, "
        f"{params * 4 / 2**30:.1f} GiB in float32, plus one batch's activations of the largest model): run the "
        "joint pass over fewer models (python -m vvm.joint ... --jobs 0,1,2), with a smaller batch "
        "(--batch-size), or on a device with more memory (--device cpu)"
    )


def move_models(models: Mapping[str, nn.Module], device: torch.device | str) -> None:
    """Move every model to ``device`` (eval mode); a clear error when they do not fit there together."""
    try:
        for m in models.values():
            m.to(device).eval()
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise RuntimeError(not_fit_message(models, device, "moving them")) from e


@dataclass(repr=False)
class JointResult(CKAResult):
    """A :class:`CKAResult` over the layers of several models: ``layers_x == layers_y`` are ``<model>/<layer>``,
    ``models`` the model keys in order, ``model_index[i]`` the model of layer ``i``."""

    models: list[str] = field(default_factory=list)
    model_index: Tensor | None = None

    def rows_of(self, model: str) -> Tensor:
        return torch.nonzero(self.model_index == self.models.index(model)).flatten()

    def layers_of(self, model: str) -> list[str]:
        """The layer names of ``model`` without the ``<model>/`` prefix."""
        return [self.layers_x[i].split(SEP, 1)[1] for i in self.rows_of(model).tolist()]

    def block(self, a: str, b: str, what: str = "matrix") -> Tensor:
        """Rows of model ``a``, columns of model ``b`` of ``matrix`` (or ``stderr``)."""
        ra, rb = self.rows_of(a), self.rows_of(b)
        return getattr(self, what)[ra][:, rb]


class JointCKA(HSICMetric):
    """Minibatch CKA between all layers of all ``models``, streamed over batches (see the module docstring).

    Args:
        models: ``{key: network}`` (keys may not contain ``/``); a ``VisionModel`` (or any wrapper with ``net``
            and ``preprocess``) is hooked on its ``net``, so layer names are the network's own.
        layers: one layer spec for every model (a preset, names or globs) or ``{key: spec}``.
        block_layers: ``"auto"`` (one product unless its temporaries would not fit), ``None`` (always one
            product) or a number of layers per block.
        kernel, estimator, precision, rbf_frac, rbf_bandwidth, max_batches: as :class:`StreamingCKA`.

    Usage::

        m = JointCKA({"r18": r18, "vit": vit}, "blocks")
        with m.track():
            for x, _ in batches:
                m.feed(x)            # or call every model on x yourself, once each
        res = m.compute()            # res.block("r18", "vit"), res.models, res.model_index
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        layers: LayerSpec | Mapping[str, LayerSpec] = "blocks",
        *,
        kernel: Kernel = "linear",
        estimator: Estimator = "unbiased",
        precision: str = "exact",
        rbf_frac: float = 1.0,
        rbf_bandwidth: str = "fixed",
        max_batches: int | None = None,
        block_layers: int | str | None = "auto",
        **kwargs,
    ) -> None:
        check_kernel(kernel)
        check_precision(precision)
        if not models:
            raise ValueError("JointCKA needs at least one model")
        bad = [k for k in models if not isinstance(k, str) or SEP in k or not k]
        if bad:
            raise ValueError(f"model keys must be non-empty strings without {SEP!r}: {bad}")
        bandwidths = Bandwidths(rbf_frac, rbf_bandwidth)
        nets = {k: hook_target(m) for k, m in models.items()}
        modules = {k: resolve_layers(nets[k], _spec_of(layers, k)) for k in nets}
        self._auto_blocks = block_layers == "auto"
        super().__init__(
            _joint_names(modules),
            None,
            kernel=kernel,
            estimator=estimator,
            precision=precision,
            max_batches=max_batches,
            block_layers=None if self._auto_blocks else block_layers,
            **kwargs,
        )
        self.rbf_frac = float(rbf_frac)
        self.rbf_bandwidth = rbf_bandwidth
        self._bandwidths = bandwidths
        # kept out of the module tree: moving or saving the metric must not move or save the networks
        self._models = dict(models)
        self._model_layers = modules
        self.recorder = KernelRecorder(
            nets, modules, self._on_batch, min_n=min_samples(estimator), tf32=precision == "fast",
            out_dtype=self.work_dtype, on_skip=self._on_skip,
        )  # fmt: skip
        self.activation_dtypes = self.recorder.activation_dtypes
        self._layers_learnt = False

    @property
    def models(self) -> list[str]:
        return list(self._model_layers)

    @property
    def model_index(self) -> Tensor:
        """``[ΣL]``: the model (its position in :attr:`models`) of every row/column."""
        sizes = [len(v) for v in self._model_layers.values()]
        return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))

    @contextlib.contextmanager
    def track(self) -> Iterator[JointCKA]:
        """Register the forward hooks on every model for the duration of the block; removed on exit."""
        with self.recorder.track():
            yield self

    def feed(self, x: Tensor) -> None:
        """One batch: run every model on ``x`` once, each through its own forward (and preprocessing)."""
        try:
            with torch.no_grad():
                for m in self._models.values():
                    m(x)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise RuntimeError(not_fit_message(self._models, x.device, "running a batch")) from e

    # ------------------------------------------------------------------ per batch
    def _learn_layers(self) -> None:
        self._layers_learnt = True
        learnt = self.recorder.layers
        if learnt is not None and learnt != self._model_layers:
            self._model_layers = {k: list(learnt[k]) for k in self._model_layers}
            names = _joint_names(self._model_layers)
            self.set_layers(names, names)

    def _stack(self, kernels: BatchKernels) -> Tensor:
        """``[ΣL, n, n]``, model after model; each layer's Gram is moved in (and dropped from ``kernels``) so
        that the batch's kernels exist once, not twice."""
        first = next(iter(next(iter(kernels.values())).values()))
        n = first.shape[-1]
        out = torch.empty(len(self.layers_x), n, n, dtype=self.work_dtype, device=first.device)
        i = 0
        for key, names in self._model_layers.items():
            per = kernels[key]
            if self.kernel == "rbf":
                out[i : i + len(names)] = self._bandwidths.kernels(
                    key, torch.stack([per.pop(m) for m in names])
                )
            else:
                for j, name in enumerate(names):
                    out[i + j] = per.pop(name)
            i += len(names)
        if self.kernel == "rbf":
            self.sigma2["x"] = torch.cat([self._bandwidths.sigma2[k] for k in self._model_layers])
        return out

    def _on_skip(self, batch_id: int) -> None:
        """A batch too small for the estimator: nothing to add, but a fixed RBF bandwidth's broadcast to join."""
        if not self._layers_learnt:
            self._learn_layers()
        if self.kernel == "rbf":
            for key, names in self._model_layers.items():
                self._bandwidths.join(key, len(names), device=self.device, dtype=self.work_dtype)
            if all(k in self._bandwidths.sigma2 for k in self._model_layers):
                self.sigma2["x"] = torch.cat([self._bandwidths.sigma2[k] for k in self._model_layers])

    def _on_batch(self, kernels: BatchKernels, masked: bool, batch_id: int) -> None:
        if not self._layers_learnt:
            self._learn_layers()
        stack = self._stack(kernels)  # also for a masked batch: RBF bandwidths are broadcast on the first one
        if masked:
            return
        if self._auto_blocks:
            self.block_layers = auto_block_layers(stack, free_memory(stack.device))
        try:
            self.update(stack, batch_id=batch_id, overwrite=True)
            return
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if not is_out_of_memory(e) or self.block_layers is not None:
                raise
        # the one product did not fit: in blocks. Retried here, after the handler, because the exception's
        # traceback keeps the failed attempt's frames and their temporaries alive until the handler ends
        empty_cache(stack.device)
        self.block_layers = max(1, stack.shape[0] // 8)
        self.update(stack, batch_id=batch_id, overwrite=True)

    def compute(self) -> JointResult:
        res = super().compute()
        base = {f.name: getattr(res, f.name) for f in fields(CKAResult) if f.init}
        return JointResult(**base, models=self.models, model_index=self.model_index)


def auto_block_layers(stack: Tensor, free_bytes: int) -> int | None:
    """``None`` (one product) when :data:`ONE_PRODUCT_COPIES` stacks fit in a quarter of ``free_bytes``; else
    the number of layers whose centring (in place, with row sums as the only temporaries) fits there."""
    per_layer = stack[0].numel() * stack.element_size()
    budget = free_bytes // 4
    if ONE_PRODUCT_COPIES * per_layer * stack.shape[0] <= budget:
        return None
    return max(1, budget // per_layer)


def _spec_of(layers: LayerSpec | Mapping[str, LayerSpec], key: str) -> LayerSpec:
    if isinstance(layers, Mapping):
        if key not in layers:
            raise ValueError(f"no layer spec for model {key!r}: layers has {sorted(layers)}")
        return layers[key]
    return layers


def _joint_names(modules: Mapping[str, list[str]]) -> list[str]:
    return [f"{k}{SEP}{name}" for k, names in modules.items() for name in names]


__all__ = [
    "JointCKA",
    "JointResult",
    "auto_block_layers",
    "best_matches",
    "hook_target",
    "identification",
    "layer_identification",
    "mean_row_max",
    "move_models",
]
