"""StreamingCKA: minibatch CKA between every pair of layers of one model (or of two), streamed over batches.

A :class:`~vvm.cka.passes.StreamingPass` (a :class:`~vvm.cka.recorder.KernelRecorder` and the layers it learns)
turns the tracked layers' outputs into per-batch linear Grams; when a batch is complete the Grams are stacked and
handed to the :class:`~vvm.cka.measures.cka.CKA` measure: through its kernel object (RBF: one bandwidth per
layer) into :meth:`HSICMetric.update`, which U-centres them, stacks them into ``G`` (``L x n²``) and gets every
pair's HSIC from one product ``G_x G_yᵀ``. See :mod:`vvm.cka.metric` for the estimator and its DDP behaviour.
Several measures in the same pass: :class:`vvm.cka.similarity.StreamingSimilarity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vvm.cka.functional import Estimator
from vvm.cka.measures_pass import MeasuresPass, cka_options
from vvm.cka.metric import HSICMetric
from vvm.cka.presets import LayerSpec


class StreamingCKA(MeasuresPass, HSICMetric):
    """Minibatch CKA between the layers of ``model`` (and of ``other``), streamed over batches: the CKA view of
    :class:`~vvm.cka.similarity.StreamingSimilarity` (the same pass with ``measures=["cka"]``), itself CKA's
    metric (:class:`HSICMetric`: ``update``, ``compute``, ``reset``, states summed under DDP).

    Args:
        model: the network whose layers are recorded (hooks go on its submodules).
        layers: module names, glob patterns or a preset (``blocks``, ``all``, ``term_project``).
        other: a second network to compare with; it must see the same examples, batch by batch.
        other_layers: layers of ``other`` (or, without ``other``, a second layer set of ``model`` for a
            rectangular matrix); defaults to ``layers``.
        kernel: a registered kernel (:data:`vvm.cka.KERNELS`: ``linear``, ``rbf``).
        kernel_params: the kernel's parameters, e.g. ``{"frac": 0.5, "bandwidth": "per_batch"}`` for ``rbf``
            (σ² = frac² · the median squared distance; ``fixed``: one σ² per layer, from the first batch).
            ``rbf_frac=``/``rbf_bandwidth=`` still work for one release, with a ``FutureWarning``.
        estimator: ``unbiased`` (HSIC₁, minibatch CKA) or ``biased`` (HSIC₀, as the term project).
        precision: ``exact`` (float32 Gram of centred features without TF32, float64 from there on) or
            ``fast`` (TF32 Grams on CUDA, float32 centring and products; sums still float64).
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
        kernel: str = "linear",
        kernel_params: Mapping[str, Any] | None = None,
        estimator: Estimator = "unbiased",
        precision: str = "exact",
        max_batches: int | None = None,
        **kwargs: Any,
    ) -> None:
        engine = cka_options(kernel, kernel_params, estimator, precision, kwargs)
        built, plumbing = self._streaming_parts(model, layers, other, other_layers, ["cka"], None, engine)
        ly = None if plumbing.symmetric else plumbing.modules_y
        super().__init__(
            plumbing.modules_x, ly, max_batches=max_batches, **built["cka"].metric_options(), **kwargs
        )
        self._modules_x, self._modules_y = plumbing.modules_x, plumbing.modules_y
        self._start(built, plumbing, None)

    @property
    def metrics(self) -> dict[str, HSICMetric]:
        return {"cka": self}
