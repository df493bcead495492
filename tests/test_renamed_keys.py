"""The pass's keys named for what they govern (``similarity.*``, ``cka.*``, ``kernel.<name>.*``) and the old
``cka.*`` keys, still accepted for one release with a warning naming the new key (vvm.schema.renamed)."""

from __future__ import annotations

import dataclasses
import sys
import warnings

import pytest
import torch
from compose import compose_settings

from vvm.cka.kernels import KERNELS
from vvm.schema import RENAMED, from_record
from vvm.schema.renamed import rename_config, rename_override
from vvm.settings import plain
from vvm.settings.cka import KERNEL_SETTINGS, KernelSettings, SimilaritySettings
from vvm.settings.job import JobSettings

TINY = ["model=r18", "dataset=synthetic", "logger=none", "dataset.limit=32"]


def test_old_keys_compose_as_the_new_ones_with_one_warning_each(tmp_path):
    old = ["cka.batch_size=64", "cka.rbf_frac=0.5", "cka.rbf_bandwidth=per_batch", "cka.layers=[stem,layer1]"]
    with pytest.warns(FutureWarning) as caught:
        job = compose_settings([*TINY, "cka.kernel=rbf", *old], tmp_path)
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, FutureWarning))
    assert messages == [
        "cka.batch_size is deprecated: use similarity.batch_size",
        "cka.layers is deprecated: use similarity.layers",
        "cka.rbf_bandwidth is deprecated: use kernel.rbf.bandwidth",
        "cka.rbf_frac is deprecated: use kernel.rbf.frac",
    ]
    new = ["similarity.batch_size=64", "kernel.rbf.frac=0.5", "kernel.rbf.bandwidth=per_batch"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new keys warn about nothing
        want = compose_settings([*TINY, "cka.kernel=rbf", *new, "similarity.layers=[stem,layer1]"], tmp_path)
    assert plain(job) == plain(want)
    assert job.similarity.batch_size == 64 and job.similarity.layers == ["stem", "layer1"]
    assert job.engine_options() == {
        "kernel": "rbf",
        "kernel_params": {"frac": 0.5, "bandwidth": "per_batch"},
        "estimator": "unbiased",
        "precision": "exact",
    }


def test_override_prefixes_and_sweeps_keep_their_form():
    with pytest.warns(FutureWarning, match="cka.max_samples is deprecated: use similarity.max_samples"):
        assert rename_override("++cka.max_samples=8") == "++similarity.max_samples=8"
    with pytest.warns(FutureWarning):
        assert rename_override("cka.batch_size=32,64") == "similarity.batch_size=32,64"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for same in ("cka.kernel=rbf", "cka.estimator=biased", "model=r18", "-m", "similarity.tf32=off"):
            assert rename_override(same) == same


def test_the_command_line_takes_old_keys_before_hydra(monkeypatch):
    import vvm.__main__ as cli

    seen = []
    monkeypatch.setattr(cli, "_hydra_main", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["vvm", "dataset=digits", "cka.precision=fast", "cka.rbf_frac=0.3"])
    with pytest.warns(FutureWarning, match="cka.precision is deprecated: use similarity.precision"):
        cli.main()
    assert seen == [["dataset=digits", "similarity.precision=fast", "kernel.rbf.frac=0.3"]]


def test_an_old_stored_config_reads_back_through_from_record(tmp_path):
    job = compose_settings(
        [*TINY, "cka.kernel=rbf", "similarity.batch_size=16", "kernel.rbf.frac=0.4"], tmp_path
    )
    new = plain(job)
    old = {k: v for k, v in new.items() if k not in ("similarity", "kernel")}
    old["cka"] = {**new["cka"], **new["similarity"], "rbf_frac": 0.4, "rbf_bandwidth": "fixed"}
    # a stored file is not the user's to edit: its old keys are read as the new ones without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        back = from_record(old, "synthetic")
    assert plain(back) == new
    # a stored config with the new keys reads back as it was, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert plain(from_record(new, "synthetic")) == new
    # the renaming leaves the stored dict as it was, and a value under the new key wins
    both = {"cka": {"batch_size": 8}, "similarity": {"batch_size": 32}}
    assert rename_config(both, warn=False) == {"cka": {}, "similarity": {"batch_size": 32}}
    assert both == {"cka": {"batch_size": 8}, "similarity": {"batch_size": 32}}


def test_every_old_key_names_a_setting_that_exists():
    for old, new in RENAMED.items():
        node: object = JobSettings()
        for part in new.split("."):
            assert hasattr(node, part), f"{old} -> {new}: no {part}"
            node = getattr(node, part)
        assert not hasattr(JobSettings().cka, old.split(".", 1)[1])  # gone from cka.*
    assert {f.name for f in dataclasses.fields(SimilaritySettings)} == {
        k.split(".", 1)[1] for k, v in RENAMED.items() if v.startswith("similarity.")
    }


def test_kernel_settings_are_generated_from_the_kernels_params():
    with_params = {n for n, cls in KERNELS.items() if dataclasses.fields(cls.Params)}
    assert set(KERNEL_SETTINGS) == with_params and "rbf" in with_params
    for name in with_params:
        params, settings = KERNELS[name].Params(), getattr(KernelSettings(), name)
        for f in dataclasses.fields(params):
            assert getattr(getattr(settings, f.name), "value", getattr(settings, f.name)) == getattr(
                params, f.name
            )


def test_the_kernel_params_reach_the_kernel():
    """``kernel_params`` from ``kernel.rbf.*`` give the CKA of the old ``rbf_frac``/``rbf_bandwidth``, and both
    differ from the default bandwidth (so the parameters are not dropped on the way)."""
    from vvm.cka import StreamingCKA
    from vvm.cka.similarity import StreamingSimilarity

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    batches = [torch.randn(16, 6, dtype=torch.float64) for _ in range(3)]
    net = net.double()

    def run(metric):
        with metric.track():
            for x in batches:
                net(x)
        out = metric.compute()
        return (out["cka"] if isinstance(out, dict) else out).matrix

    layers = ["0", "2"]
    params = {"frac": 0.3, "bandwidth": "per_batch"}
    new = run(StreamingSimilarity(net, layers, kernel="rbf", kernel_params=params))
    # the engine's old keywords still work for one release, with a warning
    with pytest.warns(FutureWarning, match="rbf_frac=, rbf_bandwidth= is deprecated"):
        old = run(StreamingCKA(net, layers, kernel="rbf", rbf_frac=0.3, rbf_bandwidth="per_batch"))
    default = run(StreamingCKA(net, layers, kernel="rbf"))
    torch.testing.assert_close(new, old)
    assert not torch.allclose(new, default)
    with pytest.raises(ValueError, match="kernel.rbf.frac=-1 must be > 0"):
        StreamingSimilarity(net, layers, kernel="rbf", kernel_params={"frac": -1})


def test_resume_reads_a_result_stored_with_the_old_keys(tmp_path):
    """A result.json whose ``config`` has ``cka.batch_size`` is the same job as ``similarity.batch_size`` (resume
    reuses it), and a different value under the old key is a difference (it computes again)."""
    from test_resume import finished_job

    from vvm.job.task import completed_result

    now = {
        "seed": 0,
        "similarity": {"batch_size": 64},
        "cka": {"kernel": "rbf"},
        "kernel": {"rbf": {"frac": 0.5}},
    }
    same = finished_job(
        tmp_path / "same", config={"seed": 0, "cka": {"kernel": "rbf", "batch_size": 64, "rbf_frac": 0.5}}
    )
    assert completed_result(same, now) is not None
    other = finished_job(tmp_path / "other", config={"seed": 0, "cka": {"kernel": "rbf", "batch_size": 32}})
    assert completed_result(other, now) is None
