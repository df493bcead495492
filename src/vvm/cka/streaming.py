"""StreamingCKA: minibatch CKA between every pair of layers of one model (or of two), streamed over batches.

A :class:`~vvm.cka.passes.StreamingPass` (a :class:`~vvm.cka.recorder.KernelRecorder` and the layers it learns)
turns the tracked layers' outputs into per-batch linear Grams; when a batch is complete the Grams are stacked and
handed to the :class:`~vvm.cka.measures.cka.CKA` measure: through its kernel object (RBF: one bandwidth per
layer) into :meth:`HSICMetric.update`, which U-centres them, stacks them into ``G`` (``L x n²``) and gets every
pair's HSIC from one product ``G_x G_yᵀ``. See :mod:`vvm.cka.metric` for the estimator and its DDP behaviour.
Several measures in the same pass: :class:`vvm.cka.similarity.StreamingSimilarity`.
"""

from __future__ import annotations

from torch import nn

from vvm.cka.functional import Estimator
from vvm.cka.measures.base import Grams
from vvm.cka.measures.cka import CKA
from vvm.cka.metric import HSICMetric
from vvm.cka.passes import StreamingPass, Tracking, recorder_options
from vvm.cka.presets import LayerSpec


class StreamingCKA(Tracking, HSICMetric):
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
        kernel: str = "linear",
        estimator: Estimator = "unbiased",
        precision: str = "exact",
        rbf_frac: float = 1.0,
        rbf_bandwidth: str = "fixed",
        max_batches: int | None = None,
        **kwargs,
    ) -> None:
        # CKA() checks the kernel, estimator and precision before any hook is set
        cka = CKA(kernel=kernel, estimator=estimator, precision=precision, rbf_frac=rbf_frac,
                  rbf_bandwidth=rbf_bandwidth)  # fmt: skip
        plumbing = StreamingPass(
            model, layers, other=other, other_layers=other_layers, on_batch=self._on_batch,
            on_layers=self._on_layers, on_skip=self._on_skip, **recorder_options({"cka": cka}, precision),
        )  # fmt: skip
        super().__init__(
            plumbing.modules_x,
            None if plumbing.symmetric else plumbing.modules_y,
            kernel=kernel,
            estimator=estimator,
            precision=precision,
            max_batches=max_batches,
            **kwargs,
        )
        self.rbf_frac = float(rbf_frac)
        self.rbf_bandwidth = rbf_bandwidth
        self._cka = cka
        self._modules_x, self._modules_y = plumbing.modules_x, plumbing.modules_y
        self.attach(plumbing)

    def _on_layers(self, layers_x: list[str], layers_y: list[str]) -> None:
        if (layers_x, layers_y) != (self.layers_x, self.layers_y):
            self.set_layers(layers_x, layers_y)

    def _on_skip(self, batch_id: int) -> None:
        """A batch too small for the estimator: nothing to add, but a fixed RBF bandwidth's broadcast to join."""
        sx, sy = self._pass.sides
        self._cka.skipped(self, sx, sy, device=self.device, dtype=self.work_dtype)

    def _on_batch(self, gx: Grams, gy: Grams | None, masked: bool, batch_id: int) -> None:
        self._cka.add(self, gx, gy, batch_id=batch_id, masked=masked, last=True)
