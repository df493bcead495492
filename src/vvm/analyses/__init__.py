"""Per-layer analyses beside CKA: what each layer sees (effective receptive fields, mean attention distances)
and what it knows (linear probes).

Hydra-free: a model, a layer spec, batches (or a datamodule) and a settings dataclass in; a result out, whose
``arrays()`` are what the .npz file holds and whose ``summary()`` is the result.json entry.
:func:`run_analyses` does all of it for one job, files and figures included.
"""

from vvm.analyses.attention import (
    AttentionResult,
    AttentionSettings,
    NotApplicable,
    distance_from_weights,
    mean_attention_distance,
    patch_distances,
)
from vvm.analyses.common import TokenGrid, first_images, pooled, spatial_map, token_grid
from vvm.analyses.erf import ERFResult, ERFSettings, effective_receptive_fields, mass_radius
from vvm.analyses.probe import ProbeResult, ProbeSettings, RidgeStats, linear_probe, probe_datamodule
from vvm.analyses.run import (
    ANALYSES,
    AnalysisSettings,
    check_names,
    run_analyses,
    write_attention,
    write_erf,
    write_probe,
)

__all__ = [
    "ANALYSES",
    "AnalysisSettings",
    "AttentionResult",
    "AttentionSettings",
    "ERFResult",
    "ERFSettings",
    "NotApplicable",
    "ProbeResult",
    "ProbeSettings",
    "RidgeStats",
    "TokenGrid",
    "check_names",
    "distance_from_weights",
    "effective_receptive_fields",
    "first_images",
    "linear_probe",
    "mass_radius",
    "mean_attention_distance",
    "patch_distances",
    "pooled",
    "probe_datamodule",
    "run_analyses",
    "spatial_map",
    "token_grid",
    "write_attention",
    "write_erf",
    "write_probe",
]
