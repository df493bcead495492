"""One job's settings: the whole config as typed objects (``JobSettings``), and the small groups that have no
home of their own (``init``, ``paths``, ``logger``).

``model``, ``compare`` and ``dataset`` hold the settings class of the chosen model (a :class:`ModelSettings`
generated from the model registry, :func:`vvm.models.settings_classes`) and dataset (a
:class:`DatasetSettings` of :mod:`vvm.settings.datasets`); ``logger`` a :class:`LoggerSettings`
(:class:`WandbSettings`, :class:`CSVSettings`) or None.
"""

from dataclasses import dataclass, field
from typing import Any

from vvm.analyses import AnalysisName, AnalysisSettings
from vvm.settings.base import MISSING, choices, seed_field
from vvm.settings.cka import CKASettings, KernelSettings, SimilaritySettings, engine_options
from vvm.settings.data import DatasetSettings
from vvm.settings.loggers import LoggerSettings
from vvm.settings.measures import MeasureName, MeasureSettings
from vvm.settings.model import ModelSettings
from vvm.settings.train import TrainerSettings, TrainSettings

InitName = choices("InitName", ("random", "pretrained"), "random | pretrained")


@dataclass
class InitSettings:
    """``init.*``: random (seeded) or pretrained weights; see ``src/vvm/conf/init/pretrained.yaml``."""

    name: InitName = InitName.random
    checkpoint: str | None = None
    weights_file: str | None = None


@dataclass
class PathSettings:
    data: str = "data"
    checkpoints: str = "checkpoints"
    output_dir: str = "outputs"


@dataclass
class JobSettings:
    """The whole job: ``python -m vvm <overrides>`` composed and checked."""

    model: ModelSettings = MISSING  # type: ignore[assignment]
    init: InitSettings = field(default_factory=InitSettings)
    dataset: DatasetSettings = MISSING  # type: ignore[assignment]
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    logger: LoggerSettings | None = None
    # the similarity pass (layers, batches, precision) and CKA's own options (kernel, estimator), each kernel's
    # parameters (kernel.rbf.frac): vvm.settings.cka
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    cka: CKASettings = field(default_factory=CKASettings)
    kernel: KernelSettings = field(default_factory=KernelSettings)
    # per-layer analyses run after the CKA pass on the (first) model: analyses=[erf,attention,probe]
    analyses: list[AnalysisName] = field(default_factory=list)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    # the similarity measures of the CKA pass, one file each (<name>.npz): measures=[cka,rsa,knn]; their
    # parameters under measure.* (conf/measure/default.yaml)
    measures: list[MeasureName] = field(default_factory=lambda: [MeasureName("cka")])
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    compare: ModelSettings | None = None
    compare_init: InitSettings | None = None
    seed: int = seed_field()
    tag: str = "job"
    paths: PathSettings = field(default_factory=PathSettings)
    resume: bool = False

    def other_init(self) -> InitSettings:
        """The second model's init (``compare_init``, defaulting to ``init``)."""
        return self.compare_init if self.compare_init is not None else self.init

    def engine_options(self) -> dict[str, Any]:
        """The engine's options these settings set (``cka.*``, ``kernel.<kernel>.*``, the pass's precision)."""
        return engine_options(self.cka, self.similarity, self.kernel)
