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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from vvm.cka.correspondence import best_matches, identification, layer_identification, mean_row_max
from vvm.cka.functional import Estimator
from vvm.cka.measures.base import Measure
from vvm.cka.measures_pass import MeasuresPass, Params, build_measures, cka_options
from vvm.cka.metric import HSICMetric
from vvm.cka.passes import SEP, JointPass, hook_target, hook_targets, recorder_options
from vvm.cka.presets import LayerSpec
from vvm.cka.result import CKAResult

# the one-product path holds the stack and its centred copy (u_centre works in place on the copy): 2 stacks
ONE_PRODUCT_COPIES = 2


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


class JointLayout:
    """The blocks of a joint result: ``layers_x == layers_y`` are ``<model>/<layer>``, ``models`` the model keys
    in order, ``model_index[i]`` the model of layer ``i``."""

    layers_x: list[str]
    models: list[str]
    model_index: Tensor | None

    def rows_of(self, model: str) -> Tensor:
        return torch.nonzero(self.model_index == self.models.index(model)).flatten()

    def layers_of(self, model: str) -> list[str]:
        """The layer names of ``model`` without the ``<model>/`` prefix."""
        return [self.layers_x[i].split(SEP, 1)[1] for i in self.rows_of(model).tolist()]

    def block(self, a: str, b: str, what: str = "matrix") -> Tensor:
        """Rows of model ``a``, columns of model ``b`` of ``matrix`` (or ``stderr``)."""
        ra, rb = self.rows_of(a), self.rows_of(b)
        return getattr(self, what)[ra][:, rb]


@dataclass(repr=False)
class JointResult(JointLayout, CKAResult):
    """A :class:`CKAResult` over the layers of several models (see :class:`JointLayout`)."""

    models: list[str] = field(default_factory=list)
    model_index: Tensor | None = None


def update_joint(metric: HSICMetric, stack: Tensor, batch_id: int, *, auto: bool, overwrite: bool) -> None:
    """A joint batch's kernel stack into ``metric``: one product when it fits (``auto``: decided by the free
    memory, :func:`auto_block_layers`), else in blocks of layers; an out-of-memory error in the one-product path
    falls back to blocks (retried once the failed attempt is freed). ``overwrite``: the stack may be centred in
    place."""
    if auto:
        metric.block_layers = auto_block_layers(stack, free_memory(stack.device))
    try:
        metric.update(stack, batch_id=batch_id, overwrite=overwrite)
        return
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_out_of_memory(e) or metric.block_layers is not None:
            raise
    # the one product did not fit: in blocks. Retried here, after the handler, because the exception's
    # traceback keeps the failed attempt's frames and their temporaries alive until the handler ends
    empty_cache(stack.device)
    metric.block_layers = max(1, stack.shape[0] // 8)
    metric.update(stack, batch_id=batch_id, overwrite=overwrite)


class JointModels(MeasuresPass):
    """The pass over several models (:class:`JointCKA`, :class:`~vvm.cka.similarity.JointSimilarity`): its parts
    (:meth:`_joint_parts`), CKA's batches into its metric in one product or in blocks (:func:`update_joint`), the
    model keys in order, the model of every row and column, and :meth:`feed`."""

    _pass: JointPass
    _models: dict[str, nn.Module]

    def _joint_parts(
        self,
        models: Mapping[str, nn.Module],
        layers: LayerSpec | Mapping[str, LayerSpec],
        measures: Sequence[str],
        params: Params | None,
        engine: dict[str, Any],
        block_layers: int | str | None,
    ) -> tuple[dict[str, Measure], JointPass]:
        """The measures and the recorder's pass over every model of ``models``."""
        self._auto_blocks = block_layers == "auto"
        built = build_measures(
            measures, params, {**engine, "update": self._update} if "cka" in measures else engine
        )
        plumbing = JointPass(
            hook_targets(models),
            layers,
            on_batch=self._on_batch,
            on_layers=self._on_layers,
            on_skip=self._on_skip,
            **recorder_options(built, engine.get("precision", "exact")),
        )
        # kept out of the module tree: moving or saving the metric must not move or save the networks
        self._models = dict(models)
        return built, plumbing

    def _update(self, metric: HSICMetric, kx: Tensor, ky: Tensor | None, batch_id: int, last: bool) -> None:
        update_joint(metric, kx, batch_id, auto=self._auto_blocks, overwrite=last)

    @property
    def models(self) -> list[str]:
        return self._pass.models

    @property
    def model_index(self) -> Tensor:
        """``[ΣL]``: the model (its position in :attr:`models`) of every row/column."""
        return self._pass.model_index

    def feed(self, x: Tensor) -> None:
        """One batch: run every model on ``x`` once, each through its own forward (and preprocessing)."""
        feed(self._models, x)


class JointCKA(JointModels, HSICMetric):
    """Minibatch CKA between all layers of all ``models``, streamed over batches (see the module docstring): the
    CKA view of :class:`~vvm.cka.similarity.JointSimilarity` (the same pass with ``measures=["cka"]``), itself
    CKA's metric.

    Args:
        models: ``{key: network}`` (keys may not contain ``/``); a ``VisionModel`` (or any wrapper with ``net``
            and ``preprocess``) is hooked on its ``net``, so layer names are the network's own.
        layers: one layer spec for every model (a preset, names or globs) or ``{key: spec}``.
        block_layers: ``"auto"`` (one product unless its temporaries would not fit), ``None`` (always one
            product) or a number of layers per block.
        kernel, kernel_params, estimator, precision, max_batches: as :class:`StreamingCKA`.

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
        kernel: str = "linear",
        kernel_params: Mapping[str, Any] | None = None,
        estimator: Estimator = "unbiased",
        precision: str = "exact",
        max_batches: int | None = None,
        block_layers: int | str | None = "auto",
        **kwargs: Any,
    ) -> None:
        engine = cka_options(kernel, kernel_params, estimator, precision, kwargs)
        built, plumbing = self._joint_parts(models, layers, ["cka"], None, engine, block_layers)
        super().__init__(
            plumbing.names,
            None,
            max_batches=max_batches,
            **built["cka"].metric_options(),
            block_layers=None if self._auto_blocks else block_layers,
            **kwargs,
        )
        self._start(built, plumbing, None)

    @property
    def metrics(self) -> dict[str, HSICMetric]:
        return {"cka": self}

    def compute(self) -> JointResult:
        res = super().compute()
        return joint_result(res, self.models, self.model_index)


def joint_result(res: CKAResult, models: list[str], model_index: Tensor) -> JointResult:
    base = {f.name: getattr(res, f.name) for f in fields(CKAResult) if f.init}
    return JointResult(**base, models=models, model_index=model_index)


def feed(models: Mapping[str, nn.Module], x: Tensor) -> None:
    """One batch through every model, once each (its own forward and preprocessing); a clear error when they
    do not fit on the device together."""
    try:
        with torch.no_grad():
            for m in models.values():
                m(x)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise RuntimeError(not_fit_message(models, x.device, "running a batch")) from e


def auto_block_layers(stack: Tensor, free_bytes: int) -> int | None:
    """``None`` (one product) when :data:`ONE_PRODUCT_COPIES` stacks fit in a quarter of ``free_bytes``; else
    the number of layers whose centring (in place, with row sums as the only temporaries) fits there."""
    per_layer = stack[0].numel() * stack.element_size()
    budget = free_bytes // 4
    if ONE_PRODUCT_COPIES * per_layer * stack.shape[0] <= budget:
        return None
    return max(1, budget // per_layer)


__all__ = [
    "JointCKA",
    "JointModels",
    "JointResult",
    "auto_block_layers",
    "best_matches",
    "hook_target",
    "identification",
    "layer_identification",
    "mean_row_max",
    "move_models",
]
