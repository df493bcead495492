"""Per-layer analyses beside CKA: what each layer sees (effective receptive fields, mean attention distances)
and what it knows (linear probes).

Hydra-free: a model, a layer spec, batches (or a datamodule) and a settings dataclass in; a result out, whose
``arrays()`` are what the .npz file holds and whose ``summary()`` is the result.json entry.
:func:`run_analyses` does all of it for one job, files and figures included.

The settings (:class:`AnalysisSettings` and one class per analysis) live with the job's other settings, in
:mod:`vvm.settings.analyses`; they are re-exported here.
"""

from vvm.analyses.attention import (
    AttentionResult,
    NotApplicable,
    distance_from_weights,
    mean_attention_distance,
    patch_distances,
)
from vvm.analyses.common import TokenGrid, first_images, pooled, spatial_map, token_grid
from vvm.analyses.erf import ERFResult, effective_receptive_fields, mass_radius
from vvm.analyses.probe import ProbeResult, RidgeStats, linear_probe, probe_datamodule
from vvm.analyses.run import (
    check_names,
    run_analyses,
    write_attention,
    write_erf,
    write_probe,
)
from vvm.settings.analyses import (
    ANALYSES,
    AnalysisSettings,
    AttentionSettings,
    ERFSettings,
    ProbeSettings,
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
