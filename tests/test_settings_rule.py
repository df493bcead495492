"""One rule for settings: classes generated from a signature (models) or declared once (datasets), typed job
nodes that come back from result.json as their own class, and the cross-field rules run from Python."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from compose import compose_settings

from vvm.schema import from_record
from vvm.settings import ConfigError, CSVSettings, ModelSettings, WandbSettings, plain
from vvm.settings.datasets import DigitsSettings, SyntheticSettings
from vvm.settings.generate import signature_settings
from vvm.settings.rules import check_rules


def _builder(num_classes: int = 10, depth: int = 3, scale: float = 0.5, extra: dict[str, Any] | None = None):
    raise AssertionError("only its signature is read")


def test_signature_settings_reads_types_and_defaults():
    cls = signature_settings(
        "toy_net",
        _builder,
        base=ModelSettings,
        first=[("name", str, dataclasses.field(default="toy_net"))],
        skip=("num_classes",),
        module=__name__,
    )
    assert cls.__name__ == "ToyNetSettings" and issubclass(cls, ModelSettings)
    hints = typing.get_type_hints(cls)
    assert (hints["depth"], hints["scale"]) == (int, float)
    assert hints["extra"] == typing.Optional[dict[str, Any]]  # noqa: UP045 - OmegaConf's spelling
    made = cls()
    # the builder's defaults; an optional mapping becomes an empty dict that overrides can add to
    assert (made.name, made.depth, made.scale, made.extra) == ("toy_net", 3, 0.5, {})
    assert made.options() == {"depth": 3, "scale": 0.5, "extra": {}}
    assert cls().extra is not made.extra  # a fresh dict per instance


def test_a_datamodule_takes_its_settings_or_their_keys():
    from vvm.data import DigitsDataModule, SyntheticDataModule

    a = DigitsDataModule(DigitsSettings(limit=30), eval_batch_size=8)
    b = DigitsDataModule(limit=30, eval_batch_size=8)
    assert (a.limit, a.split, a.eval_batch_size) == (b.limit, b.split, 8) == (30, "test", 8)
    assert a.settings == b.settings == DigitsSettings(limit=30)
    syn = SyntheticDataModule(SyntheticSettings(image_size=16, train_size=8, test_size=4))
    assert (syn.image_size, syn.train_size, syn.test_size) == (16, 8, 4)
    with pytest.raises(TypeError, match="not both: limit"):
        DigitsDataModule(DigitsSettings(), limit=3)
    with pytest.raises(ValueError, match=r"dataset.limit=0 must be >= 1"):
        DigitsDataModule(limit=0)
    with pytest.raises(TypeError, match="image_size"):
        DigitsDataModule(image_size=16)  # not a key of digits


def test_the_logger_comes_back_from_its_kind(tmp_path):
    job = compose_settings(["dataset=digits", "logger=csv", "compare=plain", "compare.depth=4"], tmp_path)
    assert isinstance(job.logger, CSVSettings) and job.compare.depth == 4
    stored = plain(job)
    assert stored["logger"]["kind"] == "csv"
    back = from_record(stored, "digits")
    assert type(back.logger) is CSVSettings and type(back.compare) is type(job.compare)
    assert plain(back) == stored
    # a result written before loggers named their kind: W&B's settings are the ones with a project
    legacy = {**stored, "logger": {"project": "vvm", "save_dir": str(tmp_path)}}
    assert type(from_record(legacy, "digits").logger) is WandbSettings
    with pytest.raises(ConfigError, match=r"logger.kind='wandb': logger=csv configures csv"):
        check_rules(dataclasses.replace(job, logger=CSVSettings(kind="wandb")))


def test_the_rules_run_from_python(tmp_path):
    job = compose_settings(["dataset=digits", "logger=none"], tmp_path)
    assert check_rules(job) is job
    small = dataclasses.replace(job, similarity=dataclasses.replace(job.similarity, batch_size=2))
    with pytest.raises(
        ConfigError, match=r"similarity.batch_size=2: the unbiased estimator needs at least 4"
    ):
        check_rules(small)
    with pytest.raises(ConfigError, match=r"^--batch-size=2: the unbiased"):
        check_rules(small, keys={"similarity.batch_size": "--batch-size"})
    wrong = dataclasses.replace(job, model=dataclasses.replace(job.model, name="r34"))
    with pytest.raises(ConfigError, match=r"model.name='r34': model=r18 builds r18"):
        check_rules(wrong)


def test_a_composed_job_pickles_into_a_fresh_process(tmp_path):
    """submitit's launchers pickle the job's config into another process: every generated class (a model's
    settings, a Choice enum) must be importable there by module and name."""
    import pickle
    import subprocess
    import sys

    from vvm.schema import compose, compose_config

    overrides = [
        "model=r18",
        "dataset=digits",
        "logger=none",
        "measures=[cka,rsa]",
        "analyses=[erf]",
        "cka.kernel=rbf",
    ]
    objects = [compose_config(overrides, output_dir=tmp_path), compose(overrides, output_dir=tmp_path)]
    code = (
        "import pickle, sys\n"
        "for obj in pickle.loads(sys.stdin.buffer.read()):\n"
        "    print(type(obj).__name__, type(obj.model).__name__ if not hasattr(obj, '_metadata') else 'cfg',"
        " obj.model.name, obj.init.name, obj.cka.kernel)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(objects), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split("\n")[:2] == [
        "DictConfig cfg r18 random rbf",
        "JobSettings R18Settings r18 random rbf",
    ]
