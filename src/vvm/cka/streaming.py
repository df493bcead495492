"""StreamingCKA: minibatch CKA between every pair of layers of one model (or of two), streamed over batches.

A :class:`~vvm.cka.recorder.KernelRecorder` turns the tracked layers' outputs into per-batch linear Grams;
when a batch is complete the Grams are stacked (RBF applied with one bandwidth per layer) and handed to
:meth:`HSICMetric.update`, which U-centres them, stacks them into ``G`` (``L x n²``) and gets every pair's HSIC
from one product ``G_x G_yᵀ``. See :mod:`vvm.cka.metric` for the estimator and its DDP behaviour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from vvm.cka.bandwidth import Bandwidths
from vvm.cka.functional import Estimator, Kernel, check_kernel, min_samples
from vvm.cka.metric import HSICMetric, check_precision
from vvm.cka.presets import LayerSpec, resolve_layers
from vvm.cka.recorder import BatchKernels, KernelRecorder


class StreamingCKA(HSICMetric):
    """Minibatch CKA between the layers of ``model`` (and of ``other``), streamed over batches.

    Args:
        model: the network whose layers are recorded (hooks go on its submodules).
        layers: module names, glob patterns or a preset (``blocks``, ``all``, ``term_project``).
        other: a second network to compare with; it must see the same examples, batch by batch.
        other_layers: layers of ``other`` (or, without ``other``, a second layer set of ``model`` for a
            rectangular matrix); defaults to ``layers``.
        kernel: ``linear`` or ``rbf`` (median heuristic times ``rbf_frac``).
        estimator: ``unbiased`` (HSIC₁, minibatch CKA) or ``biased`` (HSIC₀, as the term project).
        precision: ``exact`` (float32 Gram of centred features without TF32, float64 from there on) or
            ``fast`` (TF32 Grams on CUDA, float32 centring and products; sums still float64).
        rbf_bandwidth: ``fixed`` (one σ² per layer, from the first batch) or ``per_batch``.
        max_batches: the number of batches of the pass, when known: keeps per-batch HSIC values (paired
            standard errors of differences) in states that DDP sums.

    Usage::

        m = StreamingCKA(model, ["layer1", "layer2.0"])
        with m.track():
            for x in batches:
                model(x)
        res = m.compute()   # res.matrix, res.stderr, res.layers_x, res.layers_y, res.n_samples
    """

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
        rbf_bandwidth: str = "fixed",
        max_batches: int | None = None,
        **kwargs,
    ) -> None:
        check_kernel(kernel)
        check_precision(precision)
        bandwidths = Bandwidths(rbf_frac, rbf_bandwidth)
        modules_x = resolve_layers(model, layers)
        y_net = other if other is not None else model
        modules_y = resolve_layers(y_net, layers if other_layers is None else other_layers)
        # with one model and one layer set, the matrix is symmetric and G_y is G_x
        symmetric = other is None and modules_y == modules_x
        super().__init__(
            modules_x,
            None if symmetric else modules_y,
            kernel=kernel,
            estimator=estimator,
            precision=precision,
            max_batches=max_batches,
            **kwargs,
        )
        self.rbf_frac = float(rbf_frac)
        self.rbf_bandwidth = rbf_bandwidth
        self._bandwidths = bandwidths
        self._two_models = other is not None
        self._modules_x, self._modules_y = modules_x, modules_y
        # kept out of the module tree: moving or saving the metric must not move or save the networks
        if self._two_models:
            nets, modules = {"x": model, "y": y_net}, {"x": modules_x, "y": modules_y}
        else:
            nets, modules = {"x": model}, {"x": list(dict.fromkeys(modules_x + modules_y))}
        self.recorder = KernelRecorder(
            nets,
            modules,
            self._on_batch,
            min_n=min_samples(estimator),
            tf32=precision == "fast",
            out_dtype=self.work_dtype,
            on_skip=self._on_skip,
        )
        self.activation_dtypes = self.recorder.activation_dtypes
        self._layers_learnt = False

    @contextlib.contextmanager
    def track(self) -> Iterator[StreamingCKA]:
        """Register the forward hooks for the duration of the block; they are removed on exit."""
        with self.recorder.track():
            yield self

    def _expand(self, modules: list[str], names: list[str]) -> list[str]:
        """The recorded layer names (``name#i`` for a module that runs k times) of ``modules``, in order."""
        out: list[str] = []
        for m in modules:
            out.extend(n for n in names if n == m or n.rsplit("#", 1)[0] == m and "#" in n)
        return out

    def _learn_layers(self) -> None:
        y_key = "y" if self._two_models else "x"
        if not self._layers_learnt and self.recorder.layers is not None:
            self._layers_learnt = True
            lx = self._expand(self._modules_x, self.recorder.layers["x"])
            ly = self._expand(self._modules_y, self.recorder.layers[y_key])
            if (lx, ly) != (self.layers_x, self.layers_y):
                self.set_layers(lx, ly)

    def _on_skip(self, batch_id: int) -> None:
        """A batch too small for the estimator: nothing to add, but a fixed RBF bandwidth's broadcast to join."""
        self._learn_layers()
        if self.kernel == "rbf":
            sides = [("x", self.layers_x)] + ([] if self._symmetric else [("y", self.layers_y)])
            for side, names in sides:
                self._bandwidths.join(side, len(names), device=self.device, dtype=self.work_dtype)
            self.sigma2.update(self._bandwidths.sigma2)

    def _on_batch(self, kernels: BatchKernels, masked: bool, batch_id: int) -> None:
        y_key = "y" if self._two_models else "x"
        self._learn_layers()
        # each Gram leaves the recorder's dict as it is stacked: the batch's kernels exist once during update()
        keep = set(self.layers_y) if y_key == "x" and not self._symmetric else set()
        kx = _stack(kernels["x"], self.layers_x, keep)
        ky = None if self._symmetric else _stack(kernels[y_key], self.layers_y)
        if self.kernel == "rbf":
            kx = self._bandwidths.kernels("x", kx)
            ky = None if ky is None else self._bandwidths.kernels("y", ky)
            self.sigma2.update(self._bandwidths.sigma2)
        if masked:
            return
        self.update(kx, ky, batch_id=batch_id)


def _stack(per_layer: dict[str, Tensor], names: list[str], keep: set[str] | None = None) -> Tensor:
    """``[L, n, n]`` in the order of ``names``; each Gram is dropped from ``per_layer`` once copied, except those
    in ``keep`` (still needed for the other side)."""
    import torch

    first = per_layer[names[0]]
    out = torch.empty((len(names), *first.shape), dtype=first.dtype, device=first.device)
    for i, name in enumerate(names):
        out[i] = per_layer[name] if name in (keep or ()) else per_layer.pop(name)
    return out
