"""A job of objects (issue 26 step 4): :func:`vvm.pipeline.steps.build` returns the job's objects once, the steps
take them and return their facts, and :func:`vvm.pipeline.steps.run` merges those into result.json's dict once,
keeping what finished when a later step fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compose import compose_settings
from helpers import TINY_R18

from vvm.pipeline import objects, steps

JOB = [*TINY_R18, "init=random", "logger=none", "similarity.layers=[layer1,layer4]"]


def reference_merge(parts):
    """The merge written out key by key: later values win, two dicts under one key are joined."""
    out = {}
    for part in parts:
        for key in part:
            both = isinstance(out.get(key), dict) and isinstance(part[key], dict)
            out[key] = dict(list(out[key].items()) + list(part[key].items())) if both else part[key]
    return out


def test_merge_facts_joins_dicts_and_keeps_the_last_value():
    parts = [
        {"status": "running", "model": "r18", "seconds": {"build": 1.0}, "compare": {"model": "r34"}},
        {"compare": {"weights": "random (seed 0)"}, "seconds": {"weights": 2.0}, "layers": ["a"]},
        {"status": "ok", "layers": ["b"], "seconds": {"build": 3.0, "total": 4.0}},
    ]
    merged = steps.merge_facts(parts)
    assert merged == reference_merge(parts)
    assert merged["status"] == "ok" and merged["layers"] == ["b"]
    assert merged["seconds"] == {"build": 3.0, "weights": 2.0, "total": 4.0}
    assert merged["compare"] == {"model": "r34", "weights": "random (seed 0)"}
    assert parts[0]["seconds"] == {"build": 1.0}  # the steps' own facts are not written into


def test_build_returns_the_jobs_objects_once(tmp_path):
    job = compose_settings([*JOB, "compare=r18", "compare_init=pretrained"], tmp_path)
    built = steps.build(job, {"model": "r18", "init": "random", "dataset": "synthetic", "seed": 0})
    assert isinstance(built, objects.Job) and built.dm.name == "synthetic"
    first, second = built.models.first, built.models.second
    assert second is not None and built.models.other is second.model
    assert (first.source, second.source) == ("random", "trained")
    assert second.cache.root == Path(job.paths.checkpoints).expanduser().absolute()
    assert built.facts == {
        "family": "resnet",
        "compare": {"model": "r18", "init": "pretrained"},
        "model_x": "r18 (random)",
        "model_y": "r18 (pretrained)",
    }
    assert built.title == "r18 (random, synthetic, seed 0) vs r18 (pretrained)"
    assert built.callback.title == f"{built.title} - linear CKA" and built.logger is False
    assert built.output_dir == tmp_path and str(built.device) == "cpu"


def test_a_failing_step_keeps_what_finished(tmp_path, monkeypatch):
    """A step that fails after some of its pieces finished: result.json holds those pieces' facts, the build's,
    the failure and the seconds, and no pass facts."""

    def failing_measure(job):
        yield {"compare": {"weights": "second model ready"}, "seconds": {"weights": 0.5}}
        raise RuntimeError("the first model's training broke")

    monkeypatch.setattr(steps, "weights_and_pass", failing_measure)
    job = compose_settings([*JOB, "compare=r18"], tmp_path)
    with pytest.raises(RuntimeError, match="training broke"):
        steps.run(job)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["status"] == "failed" and res["error"] == "RuntimeError: the first model's training broke"
    assert res["compare"] == {"model": "r18", "init": "random", "weights": "second model ready"}
    assert res["model_x"] == "r18 (random)" and res["family"] == "resnet" and "traceback" in res
    assert set(res["seconds"]) == {"build", "weights", "total"} and "mean_cka" not in res
    assert res["config"]["model"]["name"] == "r18" and res["tag"] == job.tag
