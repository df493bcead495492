"""vvm's typed settings: the config as plain dataclasses that every layer receives as objects.

The job layer (:mod:`vvm.schema`) registers them in Hydra's ConfigStore as the schema of ``src/vvm/conf``, turns
the composed config into these objects once, and checks them (:func:`~vvm.settings.base.check_ranges` for each
number's range; cross-field rules in :mod:`vvm.settings.rules`). Nothing here imports omegaconf or Hydra.
"""

from vvm.settings.base import MISSING, Choice, ConfigError, check_ranges, closest, plain, recipe_fields
from vvm.settings.cka import (
    TF32,
    Bandwidth,
    CKASettings,
    Estimator,
    Kernel,
    KernelSettings,
    Precision,
    SimilaritySettings,
    engine_options,
)
from vvm.settings.data import DatasetSettings, Split
from vvm.settings.loggers import CSVSettings, WandbSettings
from vvm.settings.measures import MeasureName, MeasureSettings, job_measures, measure_params
from vvm.settings.model import ModelSettings
from vvm.settings.train import SpeedSettings, TrainerSettings, TrainSettings

__all__ = [
    "MISSING",
    "Bandwidth",
    "CKASettings",
    "CSVSettings",
    "Choice",
    "ConfigError",
    "DatasetSettings",
    "Estimator",
    "Kernel",
    "KernelSettings",
    "MeasureName",
    "MeasureSettings",
    "ModelSettings",
    "Precision",
    "SimilaritySettings",
    "SpeedSettings",
    "TF32",
    "Split",
    "TrainSettings",
    "TrainerSettings",
    "WandbSettings",
    "check_ranges",
    "closest",
    "engine_options",
    "job_measures",
    "measure_params",
    "plain",
    "recipe_fields",
]
