"""``measures=[cka,rsa,knn]`` through the framework: the settings and their rules, one CLI run writing every
measure's files beside today's cka.*, ``vvm.diff --measure``, the sweep summary per measure, W&B per measure;
(slow) ``compare=`` for every measure and ``vvm.joint --measures`` against the jobs' own files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from compose import compose_settings
from helpers import SMALL_MEASURES_JOB as SMALL
from helpers import compose_error, run_vvm

from vvm.io import load_npz

CKA_KEYS = {  # what cka.npz held before the measures: unchanged
    "cka", "cka_stderr", "layers_x", "layers_y", "n_samples", "n_batches", "hsic_xx", "hsic_yy", "kernel",
    "estimator", "activation_dtype", "batch_ids", "batch_weights", "batch_hsic_xy", "batch_hsic_xx",
    "batch_hsic_yy", "model_x", "model_y", "tf32", "float32_device", "float32_conv", "float32_matmul",
    "batch_fingerprint",
    "comparable",  # what vvm.diff checks two runs share (kernel, estimator, precision): issue 27
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- settings
def test_measures_settings_and_their_rules(tmp_path):
    job = compose_settings(["dataset=digits"], tmp_path)
    assert [str(m) for m in job.measures] == ["cka"]  # the default: today's jobs
    job = compose_settings(["dataset=digits", "measures=[cka,rsa,knn]", "measure.knn.k=5",
                            "measure.rsa.correlation=pearson"], tmp_path)  # fmt: skip
    assert [str(m) for m in job.measures] == ["cka", "rsa", "knn"]
    assert job.measure.knn.k == 5 and str(job.measure.rsa.correlation) == "pearson"
    err = compose_error(["dataset=digits", "measures=[knn]", "measure.knn.n=8"], tmp_path)
    assert "measure.knn.n=8: knn with k=10" in err and "needs at least 11 examples per pool" in err
    job = compose_settings(
        ["dataset=digits", "measures=[knn]", "similarity.batch_size=8"], tmp_path
    )  # kNN: pools
    err = compose_error(["dataset=digits", "measures=[rsa,knn]", "measure.knn.n=512"], tmp_path)
    assert "measure.rsa.n=1024, measure.knn.n=512" in err and "give them the same n" in err
    assert "measure.knn.k=0 must be >= 1" in compose_error(["dataset=digits", "measure.knn.k=0"], tmp_path)
    assert "name each measure once" in compose_error(["dataset=digits", "measures=[rsa,rsa]"], tmp_path)
    assert "kendall" in compose_error(["dataset=digits", "measure.rsa.correlation=kendall"], tmp_path)


def test_a_plan_too_small_for_k_is_refused_before_any_work(tmp_path):
    from vvm.pipeline.steps import build

    job = compose_settings(
        [*SMALL, "measures=[cka,knn]", "similarity.max_samples=16", "measure.knn.k=19"], tmp_path
    )
    with pytest.raises(Exception, match="measure knn would skip every pool"):
        build(
            job, {"model": "r18", "init": "random"}
        )  # one pool of all 16 examples: it does not hold k + 1 = 20


# ---------------------------------------------------------------------------------------------- one job
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One job with measures=[cka,rsa,knn] (in-process: the CLI's composition is the settings test's; the slow
    compare test runs the CLI), counting the model's forward calls."""
    import vvm.pipeline.steps

    out = tmp_path_factory.mktemp("measures") / "run"
    build, calls = vvm.pipeline.steps.build, []

    def counting_build(job, about):
        built = build(job, about)
        built.models.model.register_forward_hook(lambda *a: calls.append(1))
        return built

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vvm.pipeline.steps, "build", counting_build)
        summary = vvm.pipeline.steps.run(
            compose_settings([*SMALL, "measures=[cka,rsa,knn]", "measure.knn.k=5"], out)
        )
    assert summary["status"] == "ok", summary.get("error")
    (out / "forward_calls").write_text(str(len(calls)))
    return out


def test_all_measures_come_from_one_forward_per_pool(run_dir):
    """measures=[cka,rsa,knn] runs one pass: the model's forward runs once per pool (here all 40 images, fewer
    than measure.*.n = 1024), and CKA takes its batches of 20 from it."""
    res = json.loads((run_dir / "result.json").read_text())
    assert res["n_batches"] == 2 and (run_dir / "forward_calls").read_text() == "1"


def test_a_job_writes_every_measure_beside_cka(run_dir):
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "ok" and set(res["measures"]) == {"cka", "rsa", "knn"}
    assert res["mean_cka"] == res["measures"]["cka"]
    assert set(load_npz(run_dir / "cka.npz")) == CKA_KEYS
    for name in ("rsa", "knn"):
        for ext in ("npz", "png", "pdf"):
            assert (run_dir / f"{name}.{ext}").stat().st_size > 0
            assert res["measure_files"][name][ext] == str(run_dir / f"{name}.{ext}")
        z = load_npz(run_dir / f"{name}.npz")
        assert z["matrix"].dtype == np.float64 and z["matrix"].shape == z["stderr"].shape == (10, 10)
        assert list(z["layers_x"]) == list(load_npz(run_dir / "cka.npz")["layers_x"])
        assert int(z["n_samples"]) == 40 and int(z["n_batches"]) == 1 and z["measure"] == name
        assert int(z["pool_size"]) == 40 and int(z["n_declared"]) == 1024 and bool(z["whole_split"])
        assert json.loads(str(z["comparable"]))["pool_size"] == 40
        np.testing.assert_array_equal(np.diag(z["matrix"]), 1.0)
        mask = ~np.eye(10, dtype=bool)
        assert res["measures"][name] == pytest.approx(z["matrix"][mask].mean())
    assert res["measure_files"]["side_by_side"] == {
        ext: str(run_dir / f"measures.{ext}") for ext in ("png", "pdf")
    }
    assert (
        load_npz(run_dir / "knn.npz")["k"] == 5 and load_npz(run_dir / "rsa.npz")["correlation"] == "spearman"
    )
    assert float(load_npz(run_dir / "knn.npz")["chance"]) == pytest.approx(5 / 39)


def test_diff_per_measure(run_dir, tmp_path):
    from vvm.diff import main

    main([str(run_dir), str(run_dir), "--out", str(tmp_path), "--measure", "rsa"])
    d = load_npz(tmp_path / "diff-rsa.npz")
    assert bool(d["paired"]) and d["measure"] == "rsa" and (tmp_path / "diff-rsa.png").is_file()
    np.testing.assert_array_equal(d["diff"], 0.0)
    assert not (tmp_path / "diff.npz").exists()


def test_diff_of_a_measure_pairs_the_batches(tmp_path):
    """Two runs over the same batches: the paired standard error is that of the per-batch differences' weighted
    mean, written out here; independent runs add the variances."""
    from vvm.diff import cka_difference

    rng = np.random.default_rng(0)
    w = np.array([20.0, 20.0, 12.0, 20.0])
    va, vb = rng.uniform(0.2, 0.8, (4, 3, 3)), rng.uniform(0.2, 0.8, (4, 3, 3))
    va[2, 1, 2] = np.nan  # undefined in one batch: that batch is left out of the entry
    layers = np.array(["a", "b", "c"])
    for name, v in (("a", va), ("b", vb)):
        (tmp_path / name).mkdir()
        m = np.nanmean(v, axis=0)  # stand-ins: only the per-batch values enter the paired error
        np.savez(tmp_path / name / "rsa.npz", matrix=m, stderr=np.full((3, 3), 0.1), layers_x=layers,
                 layers_y=layers, n_batches=4, batch_ids=np.arange(4), batch_weights=w, batch_values=v,
                 batch_fingerprint="same")  # fmt: skip
    d = cka_difference(tmp_path / "a", tmp_path / "b", measure="rsa")
    diff = va - vb
    ok = np.isfinite(diff[:, 0, 0])
    mean = (w * diff[:, 0, 0]).sum() / w.sum()
    se = np.sqrt(4 / 3 * (w**2 * (diff[:, 0, 0] - mean) ** 2).sum()) / w.sum()
    assert bool(d["paired"]) and ok.all() and d["diff_stderr"][0, 0] == pytest.approx(se, rel=1e-12)
    keep = np.isfinite(diff[:, 1, 2])
    w3, d3 = w[keep], diff[keep, 1, 2]
    m3 = (w3 * d3).sum() / w3.sum()
    se3 = np.sqrt(3 / 2 * (w3**2 * (d3 - m3) ** 2).sum()) / w3.sum()
    assert (
        d["diff_stderr"][1, 2] == pytest.approx(se3, rel=1e-12) and d["df"][1, 2] == 2 and d["df"][0, 0] == 3
    )


def test_sweep_summary_per_measure(run_dir, tmp_path):
    from vvm.sweep.summary import write_summary

    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        shutil.copytree(run_dir, sweep / job)
    out = write_summary(sweep, log_wandb=False)
    for name in ("rsa", "knn"):
        assert (sweep / f"summary-{name}.png").stat().st_size > 0 and f"{name}_png" in out["files"]
    header = (sweep / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("mean_cka") + 1 : header.index("mean_cka") + 3] == ["mean_rsa", "mean_knn"]
    assert [j.status for j in out["jobs"]] == ["ok", "ok"] and out["jobs"][0].matrices["rsa"].shape == (
        10,
        10,
    )


def test_loggers_get_each_measure():
    import torch
    from helpers import WandbLogger

    from vvm.cka.measures import MeasureResult
    from vvm.loggers.logger import log_measure

    res = MeasureResult(torch.eye(2), torch.zeros(2, 2), ["a", "b"], ["a", "b"], 8, 2, "knn", {"k": 3})
    logger = WandbLogger()
    log_measure(logger, res, measure="knn", stage="final", image="knn.png", step=0)
    assert logger.calls == [
        ("metrics", ["knn/mean_offdiag", "knn/n_samples"]),
        ("table", "knn/table", ["layer_x", "layer_y", "i", "j", "knn", "stderr"]),
        ("image", "knn/heatmap", "final: mean off-diagonal kNN 0.000"),
    ]


# ---------------------------------------------------------------------------------------------- slow: compare, joint
@pytest.mark.slow
def test_compare_works_for_every_measure(tmp_path):
    """Through the CLI (python -m vvm ... measures=[cka,rsa,knn] compare=r18)."""
    run_vvm([*SMALL, "measures=[cka,rsa,knn]", "measure.knn.k=5", "compare=r18", "compare.seed=1",
             "similarity.other_layers=[stem,layer2.0,fc]", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)  # fmt: skip
    for name in ("cka", "rsa", "knn"):
        z = load_npz(tmp_path / f"{name}.npz")
        m = z["cka" if name == "cka" else "matrix"]
        assert m.shape == (10, 3) and list(z["layers_y"]) == ["stem", "layer2.0", "fc"]  # rows A, columns B
        assert np.isfinite(m).all() and not np.allclose(m[[0, 3, 9]], np.eye(3))


@pytest.mark.slow
def test_joint_measures_equal_the_jobs_own_files(tmp_path):
    """Two random-init jobs (no training) over the same batches; the joint pass's diagonal blocks of every
    measure are each job's own matrix."""
    from vvm.joint.joint_pass import main
    from vvm.pipeline.steps import run

    sweep = tmp_path / "multirun" / "a" / "b"
    for job, seed in (("0", 0), ("1", 1)):
        overrides = [*SMALL, "measures=[cka,rsa,knn]", "measure.knn.k=5", f"model.seed={seed}"]
        run(compose_settings(overrides, sweep / job))
    assert main([str(sweep), "--measures", "cka,rsa,knn", "--logger", "none", "--no-progress"]) == 0
    out = sweep / "joint"
    for name, stem, key in (
        ("cka", "joint", "cka"),
        ("rsa", "joint-rsa", "matrix"),
        ("knn", "joint-knn", "matrix"),
    ):
        z = load_npz(out / f"{stem}.npz")
        assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.png").is_file()
        assert (out / f"correspondence{stem[5:]}.png").is_file() and len(
            list((out / f"pairs{stem[5:]}").iterdir())
        ) == 1
        for k, job in enumerate(("0", "1")):
            rows = np.flatnonzero(z["model_index"] == k)
            own = load_npz(sweep / job / f"{name}.npz")[key]
            np.testing.assert_allclose(z[key][np.ix_(rows, rows)], own, atol=1e-9, rtol=0)
    assert load_npz(out / "joint-knn.npz")["k"] == 5
