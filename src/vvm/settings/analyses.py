"""The per-layer analyses' settings: which analyses a job runs (``analyses``, a list of :data:`AnalysisName`) and
how each one runs (``analysis.erf.*``, ``analysis.attention.*``, ``analysis.probe.*``; documented defaults in
``conf/analysis/default.yaml``). :mod:`vvm.analyses` does the work with them.
"""

from dataclasses import dataclass, field

from vvm.settings.base import choices, number

ANALYSES = ("erf", "attention", "probe")
AnalysisName = choices(
    "AnalysisName",
    ANALYSES,
    "erf (effective receptive fields) | attention (mean attention distance) | probe (linear probes)",
)

# the definitions of the effective receptive field (vvm.analyses.erf): Luo et al.'s per unit, or the channel sum's
ERF_MODES = ("unit", "channel_sum")
ERFMode = choices(
    "ERFMode",
    ERF_MODES,
    "unit (mean over sampled channels of |d y_c / d x|, Luo et al.) | channel_sum (|d sum_c y_c / d x|)",
)

# the probe's ridge strengths, relative to the mean eigenvalue of the centred XᵀX (trace / d): 1e-8 ... 1e2
RELATIVE_RIDGES = tuple(10.0**k for k in range(-8, 3))


@dataclass
class ERFSettings:
    """``analysis.erf.*``: ``n_images``: images averaged (the first of the CKA pass's order); ``batch_size``:
    images per forward/backward pass (memory: every tracked layer's activations of a batch are kept for the
    backwards); ``mode``: ``unit`` (Luo et al.'s per-unit ERF, averaged over a seeded sample of ``units``
    channels per layer, ``units_per_image`` of them per image: that many backwards per layer and batch) or
    ``channel_sum`` (the ERF of the sum over channels)."""

    n_images: int = number(64, minimum=1, why="images averaged")
    batch_size: int = number(32, minimum=1, why="images per forward/backward pass")
    mode: ERFMode = ERFMode.unit
    units: int = number(64, minimum=1, why="channels sampled per layer (all when a layer has fewer)")
    units_per_image: int = number(
        1, minimum=1, why="sampled channels per image: backwards per layer and batch"
    )


@dataclass
class AttentionSettings:
    """``analysis.attention.*``: ``n_images``: images averaged (the first of the CKA pass's order);
    ``batch_size``: images per forward pass; ``renormalise``: renormalise each query's weights over the patch
    keys (see :mod:`vvm.analyses.attention`)."""

    n_images: int = number(64, minimum=1, why="images averaged")
    batch_size: int = number(32, minimum=1, why="images per forward pass")
    renormalise: bool = True


@dataclass
class ProbeSettings:
    """``analysis.probe.*``: ``max_train``: a seeded random subset of the training split (None: all of it; the
    seed is the job's); ``holdout``: the fraction of it that chooses the ridge strength; ``ridges``: the grid,
    relative to ``trace(XᵀX_c) / d``; ``max_eval``: a cap on evaluation examples; ``max_gram_mib``: the largest
    ``XᵀX`` allowed per layer."""

    max_train: int | None = number(None, minimum=2, why="training examples (null: the whole split)")
    holdout: float = number(0.2, minimum=0.0, below=1.0, why="a fraction of the training examples")
    ridges: list[float] = field(default_factory=lambda: list(RELATIVE_RIDGES))
    max_eval: int | None = number(None, minimum=1, why="evaluation examples (null: the whole split)")
    batch_size: int = number(256, minimum=1, why="examples per forward pass")
    max_gram_mib: float = number(1024.0, above=0.0, why="MiB of XᵀX per layer (8·d² bytes)")


@dataclass
class AnalysisSettings:
    """``analysis.*``: the settings of each analysis."""

    erf: ERFSettings = field(default_factory=ERFSettings)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
