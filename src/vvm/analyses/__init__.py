"""Per-layer analyses beside CKA: what each layer sees (effective receptive fields, mean attention distances)
and what it knows (linear probes).

Hydra-free: a model, a layer spec, batches (or a datamodule) and parameters in; a result out, whose ``arrays()``
are what the .npz file holds and whose ``summary()`` is the result.json entry. Each analysis is one module
holding a registered :class:`~vvm.analyses.registry.Analysis` (its parameters, run, figure, logged numbers and
sweep panels); importing it here is its registration. :func:`run_analyses` does all of it for one job, files
and figures included.

The settings are generated here from the registered analyses' ``Params``: :data:`AnalysisName` (which analyses
a job runs: ``analyses=[erf,attention,probe]``) and :class:`AnalysisSettings` (``analysis.<name>.<param>``,
documented defaults in ``conf/analysis/default.yaml``).
"""

# isort: off
# the registration, in the order the analyses are listed (AnalysisName, errors, figures)
from vvm.analyses import erf, attention, probe  # noqa: F401

# isort: on
from vvm.analyses.attention import (
    Attention,
    AttentionParams,
    AttentionResult,
    distance_from_weights,
    mean_attention_distance,
    patch_distances,
)
from vvm.analyses.common import TokenGrid, first_images, pooled, spatial_map, token_grid
from vvm.analyses.erf import ERF, ERFParams, ERFResult, effective_receptive_fields, mass_radius
from vvm.analyses.probe import Probe, ProbeParams, ProbeResult, linear_probe, probe_datamodule
from vvm.analyses.registry import (
    ANALYSES,
    Analysis,
    NotApplicable,
    SweepPanels,
    check_names,
    register_analysis,
    run_analyses,
    settings_problems,
)
from vvm.analyses.ridge import RidgeStats
from vvm.settings.base import choices
from vvm.settings.generate import registry_settings

AnalysisName = choices(
    "AnalysisName", tuple(ANALYSES), " | ".join(f"{n} ({cls.title})" for n, cls in ANALYSES.items())
)
ANALYSIS_SETTINGS: dict[str, type]
AnalysisSettings, ANALYSIS_SETTINGS = registry_settings(
    "AnalysisSettings",
    ANALYSES,
    module=__name__,
    key="analysis",
    doc="``analysis.*``: each analysis's parameters (conf/analysis/default.yaml).",
)

__all__ = [
    "ANALYSES",
    "ANALYSIS_SETTINGS",
    "ERF",
    "Analysis",
    "AnalysisName",
    "AnalysisSettings",
    "Attention",
    "AttentionParams",
    "AttentionResult",
    "ERFParams",
    "ERFResult",
    "NotApplicable",
    "Probe",
    "ProbeParams",
    "ProbeResult",
    "RidgeStats",
    "SweepPanels",
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
    "register_analysis",
    "run_analyses",
    "settings_problems",
    "spatial_map",
    "token_grid",
]
