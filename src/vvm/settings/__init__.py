"""vvm's typed settings: the config as plain dataclasses that every layer receives as objects.

The job layer (:mod:`vvm.schema`) registers them in Hydra's ConfigStore as the schema of ``src/vvm/conf``, turns
the composed config into these objects once, and checks them (:func:`~vvm.settings.base.check_ranges` for each
number's range; cross-field rules in :mod:`vvm.schema.rules`). Nothing here imports omegaconf or Hydra.
"""

from vvm.settings.analyses import (
    ANALYSES,
    AnalysisName,
    AnalysisSettings,
    AttentionSettings,
    ERFMode,
    ERFSettings,
    ProbeSettings,
)
from vvm.settings.base import MISSING, Choice, ConfigError, check_ranges, closest, plain, recipe_fields
from vvm.settings.cka import TF32, Bandwidth, CKASettings, Estimator, Kernel, Precision
from vvm.settings.data import DatasetSettings, Split
from vvm.settings.job import CSVSettings, InitName, InitSettings, JobSettings, PathSettings, WandbSettings
from vvm.settings.measures import MeasureName, MeasureSettings, job_measures, measure_params
from vvm.settings.model import ModelSettings
from vvm.settings.train import SpeedSettings, TrainerSettings, TrainSettings

__all__ = [
    "ANALYSES",
    "MISSING",
    "AnalysisName",
    "AnalysisSettings",
    "AttentionSettings",
    "Bandwidth",
    "CKASettings",
    "CSVSettings",
    "Choice",
    "ConfigError",
    "DatasetSettings",
    "ERFMode",
    "ERFSettings",
    "Estimator",
    "InitName",
    "InitSettings",
    "JobSettings",
    "Kernel",
    "MeasureName",
    "MeasureSettings",
    "ModelSettings",
    "PathSettings",
    "Precision",
    "ProbeSettings",
    "SpeedSettings",
    "TF32",
    "Split",
    "TrainSettings",
    "TrainerSettings",
    "WandbSettings",
    "check_ranges",
    "closest",
    "job_measures",
    "measure_params",
    "plain",
    "recipe_fields",
]
