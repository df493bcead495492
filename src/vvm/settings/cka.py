"""The CKA pass's settings (``cka.*``): how the kernels are made and estimated, which layers, which batches."""

from dataclasses import dataclass
from typing import Any

from vvm.cka.bandwidth import BANDWIDTH_MODES
from vvm.cka.functional import ESTIMATORS
from vvm.cka.kernels import KERNELS, param_names
from vvm.cka.precision import PRECISIONS, TF32_MODES
from vvm.settings.base import choices, number, plain

Kernel = choices("Kernel", tuple(KERNELS), " | ".join(KERNELS))
Estimator = choices("Estimator", ESTIMATORS, "unbiased (HSIC_1, Nguyen et al. 2021) | biased (HSIC_0)")
Precision = choices("Precision", PRECISIONS, "exact (<= 1e-6 from float64) | fast (<= 1e-4)")
Bandwidth = choices("Bandwidth", BANDWIDTH_MODES, "fixed (one sigma^2 per layer) | per_batch")
COLOUR_RANGES = ("fixed", "auto")  # the heatmaps' colour scale (vvm.plots.style.colour_limits)
ColourRange = choices(
    "ColourRange", COLOUR_RANGES, "fixed ([0, 1]) | auto (from the map's smallest off-diagonal value up to 1)"
)
TF32 = choices(
    "TF32", TF32_MODES, "allow (PyTorch's settings: TF32 convolutions on a GPU) | off (IEEE float32)"
)


@dataclass
class CKASettings:
    """``cka.*``: see ``src/vvm/conf/cka/default.yaml`` for what each one does."""

    kernel: Kernel = Kernel.linear
    estimator: Estimator = Estimator.unbiased
    precision: Precision = Precision.exact
    tf32: TF32 = TF32.allow
    rbf_frac: float = number(1.0, above=0.0, why="sigma^2 = rbf_frac^2 * median squared distance")
    rbf_bandwidth: Bandwidth = Bandwidth.fixed
    layers: Any = "blocks"
    other_layers: Any = None
    batch_size: int = number(256, minimum=1, why="examples per CKA batch")
    shuffle: bool = True
    max_samples: int | None = number(None, minimum=1, why="examples in the CKA pass (null: all)")
    every_n_epochs: int = number(0, minimum=0, why="0 (no CKA during training) or a number of epochs")
    colour_range: ColourRange = ColourRange.fixed

    def engine_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`vvm.cka.StreamingCKA` / :class:`vvm.cka.JointCKA` these set."""
        return {
            "kernel": self.kernel.value,
            "kernel_params": plain(
                {p: getattr(self, f"{self.kernel.value}_{p}") for p in param_names(self.kernel.value)}
            ),
            "estimator": self.estimator.value,
            "precision": self.precision.value,
        }

    def layer_spec(self, other: bool = False) -> Any:
        """``layers`` (or, for the second model, ``other_layers`` falling back to ``layers``) as a preset name
        or a list of names."""
        spec = self.other_layers if other and self.other_layers is not None else self.layers
        return spec if isinstance(spec, str) else list(spec)
