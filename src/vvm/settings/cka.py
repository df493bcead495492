"""The similarity pass's settings, in three groups named for what each governs:

- ``similarity.*`` (:class:`SimilaritySettings`): the pass itself, whatever measures it computes (CKA, RSA, kNN,
  the CCA family...): which layers, which batches (``batch_size``, ``shuffle``, ``max_samples``), when
  (``every_n_epochs``), how precisely (``precision``, ``tf32``) and the heatmaps' ``colour_range``. These were
  ``cka.*`` while CKA was the only measure; the old keys still work for one release (:mod:`vvm.schema.renamed`).
- ``cka.*`` (:class:`CKASettings`): CKA's own options, read by CKA alone: the ``kernel`` and the ``estimator``.
- ``kernel.<name>.*`` (:class:`KernelSettings`): each kernel's own parameters (``kernel.rbf.frac``), generated
  from the kernel's ``Params`` (:mod:`vvm.cka.kernels`); only the chosen kernel's (``cka.kernel``) are used.

Documented defaults: ``src/vvm/conf/similarity/default.yaml``, ``conf/cka/default.yaml``,
``conf/kernel/default.yaml``.
"""

from dataclasses import dataclass
from typing import Any

from vvm.cka.functional import ESTIMATORS
from vvm.cka.kernels import KERNELS
from vvm.cka.precision import PRECISIONS, TF32_MODES
from vvm.settings.base import choices, number, plain
from vvm.settings.generate import registry_settings

Kernel = choices("Kernel", tuple(KERNELS), " | ".join(KERNELS))
Estimator = choices("Estimator", ESTIMATORS, "unbiased (HSIC_1, Nguyen et al. 2021) | biased (HSIC_0)")
Precision = choices("Precision", PRECISIONS, "exact (<= 1e-6 from float64) | fast (<= 1e-4)")
COLOUR_RANGES = ("fixed", "auto")  # the heatmaps' colour scale (vvm.plots.style.colour_limits)
ColourRange = choices(
    "ColourRange", COLOUR_RANGES, "fixed ([0, 1]) | auto (from the map's smallest off-diagonal value up to 1)"
)
TF32 = choices(
    "TF32", TF32_MODES, "allow (PyTorch's settings: TF32 convolutions on a GPU) | off (IEEE float32)"
)

KERNEL_SETTINGS: dict[str, type]
KernelSettings, KERNEL_SETTINGS = registry_settings(
    "KernelSettings",
    KERNELS,
    module=__name__,
    key="kernel",
    doc="``kernel.*``: each kernel's own parameters (those kernels that have any; conf/kernel/default.yaml).",
)
Bandwidth = type(KernelSettings().rbf.bandwidth)  # the Choice of kernel.rbf.bandwidth


@dataclass
class CKASettings:
    """``cka.*``: CKA's own options (``src/vvm/conf/cka/default.yaml``); its kernel's parameters are
    ``kernel.<kernel>.*``."""

    kernel: Kernel = Kernel.linear
    estimator: Estimator = Estimator.unbiased


@dataclass
class SimilaritySettings:
    """``similarity.*``: the similarity pass, whichever measures it runs (``src/vvm/conf/similarity/default.yaml``).
    Named ``similarity`` as the pass's classes are (:class:`vvm.cka.StreamingSimilarity`): ``cka.*`` is CKA's."""

    layers: Any = "blocks"
    other_layers: Any = None
    batch_size: int = number(256, minimum=1, why="examples per batch of the pass")
    shuffle: bool = True
    max_samples: int | None = number(None, minimum=1, why="examples in the pass (null: all)")
    every_n_epochs: int = number(0, minimum=0, why="0 (no pass during training) or a number of epochs")
    precision: Precision = Precision.exact
    tf32: TF32 = TF32.allow
    colour_range: ColourRange = ColourRange.fixed

    def layer_spec(self, other: bool = False) -> Any:
        """``layers`` (or, for the second model, ``other_layers`` falling back to ``layers``) as a preset name
        or a list of names."""
        spec = self.other_layers if other and self.other_layers is not None else self.layers
        return spec if isinstance(spec, str) else list(spec)


def kernel_params(cka: CKASettings, kernels: Any) -> dict[str, Any]:
    """The plain values of ``kernel.<cka.kernel>.*`` (empty for a kernel without parameters)."""
    own = getattr(kernels, cka.kernel.value, None)
    return plain(own) if own is not None else {}


def engine_options(cka: CKASettings, similarity: SimilaritySettings, kernels: Any) -> dict[str, Any]:
    """The keyword arguments of the engine's passes and measures (:class:`vvm.cka.StreamingSimilarity`,
    :func:`vvm.cka.measures.make_measure`) these settings set: ``kernel``, ``kernel_params``, ``estimator``,
    ``precision``."""
    return {
        "kernel": cka.kernel.value,
        "kernel_params": kernel_params(cka, kernels),
        "estimator": cka.estimator.value,
        "precision": similarity.precision.value,
    }
