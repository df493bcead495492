"""The per-layer analyses wired into a job and a sweep: ``analyses=[...]`` and ``analysis.*`` composed and checked,
a job's result.json, files and logs (CSV and W&B), the sweep's cross-family figures, and the issue's acceptance
command (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from compose import compose_settings
from helpers import run_vvm

from vvm.analyses import ANALYSES, AnalysisName
from vvm.io import write_json, write_npz
from vvm.pipeline.steps import run
from vvm.schema import CONFIG_DIR, ConfigError, override_errors

# a tiny job: 8x8 synthetic images, 32 a split, two images for the ERF and the attention distances
TINY = [
    "dataset=synthetic",
    "dataset.image_size=8",
    "dataset.train_size=32",
    "dataset.test_size=32",
    "similarity.batch_size=16",
    "similarity.max_samples=16",
    "analysis.erf.n_images=2",
    "analysis.attention.n_images=2",
    "analysis.probe.batch_size=32",
    "trainer=cpu",
]
TINY_VIT = [
    "model=timm",
    "model.name=vit_tiny_patch16_224",
    "+model.timm_kwargs.img_size=8",
    "+model.timm_kwargs.patch_size=4",
    "+model.timm_kwargs.depth=2",
]


# ------------------------------------------------------------------------------------------ the config
def test_analyses_default_to_none_and_compose_as_choices(tmp_path):
    assert compose_settings(["model=r18", "dataset=digits"], tmp_path).analyses == []
    job = compose_settings(
        ["model=r18", "dataset=digits", "analyses=[probe,erf]", "analysis.probe.max_train=100", "seed=3"],
        tmp_path,
    )
    assert job.analyses == [AnalysisName.probe, AnalysisName.erf] and [str(a) for a in job.analyses] == [
        "probe",
        "erf",
    ]
    assert job.analysis.probe.max_train == 100 and job.analysis.erf.n_images == 64
    assert tuple(a.value for a in AnalysisName) == tuple(ANALYSES)
    assert set(ANALYSES) >= {"erf", "attention", "probe"}  # another registered analysis changes nothing here


def test_documented_defaults_are_the_schema_defaults(tmp_path):
    from vvm.analyses import AnalysisSettings
    from vvm.settings import plain

    job = compose_settings(["model=r18", "dataset=digits"], tmp_path)
    assert plain(job.analysis) == plain(AnalysisSettings())


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "analyses=[erff]",
            "Invalid value 'erff', expected one of [erf, attention, probe",
        ),  # more when more are registered
        ("analyses=[erf,cka]", "Invalid value 'cka'"),
        ("analysis.probe.holdout=1.0", "analysis.probe.holdout=1.0 must be < 1"),
        ("analysis.erf.n_images=0", "analysis.erf.n_images=0 must be >= 1"),
        ("analysis.erf.mode=sum", "Invalid value 'sum', expected one of [unit, channel_sum]"),
        ("analysis.erf.units=0", "analysis.erf.units=0 must be >= 1"),
        ("analysis.probe.ridges=[]", "analysis.probe.ridges=[]: a non-empty list of positive"),
        ("analysis.probe.holdout=0", "choosing a ridge needs held-out examples"),
    ],
)
def test_bad_analysis_settings_are_refused_when_composed(tmp_path, override, message):
    with pytest.raises(Exception) as err:
        compose_settings(["model=r18", "dataset=digits", override], tmp_path)
    text = f"{err.value} {err.value.__cause__ or ''}"
    assert message in text
    assert "analyses" in text or "full_key: analysis." in text or isinstance(err.value, ConfigError)


def test_misspelt_analysis_key_names_the_closest():
    (error,) = override_errors(["analysis.erf.n_image=3"], CONFIG_DIR)
    assert "did you mean analysis.erf.n_images?" in error


# ------------------------------------------------------------------------------------------ one job
def test_job_writes_analyses_files_result_and_csv_scalars(tmp_path):
    out = tmp_path / "run"
    # four layers keep it quick: the probe's eigendecompositions grow as d³ (layer4's d = 512)
    layers = "similarity.layers=[stem,layer1.0,layer2.0,fc]"
    job = compose_settings(["model=r18", *TINY, layers, "analyses=[erf,attention,probe]", "logger=csv"], out)
    summary = run(job)
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" == summary["status"] and list(res["analyses"]) == ANALYSES_ORDER
    erf, att, probe = (res["analyses"][k] for k in ANALYSES_ORDER)
    # attention does not apply to a CNN: a one-line note, no file, not an error
    assert att["applies"] is False and "does not apply to r18" in att["note"] and "\n" not in att["note"]
    assert not (out / "attention.npz").exists() and not (out / "attention.png").exists()
    assert erf["layers"][0] == "stem" and erf["n_images"] == 2 and erf["skipped"] == {"fc": ANY_FLAT}
    assert len(probe["accuracy"]) == 4 and probe["n_train"] == 32 and probe["n_eval"] == 32
    for name in ("erf", "probe"):
        for ext in ("npz", "png", "pdf"):
            assert Path(res["analyses"][name]["files"][ext]) == out / f"{name}.{ext}"
            assert (out / f"{name}.{ext}").stat().st_size > 0
        assert res["seconds"][name] == res["analyses"][name]["seconds"] > 0
    assert {"build", "weights", "cka", "erf", "attention", "probe", "total"} <= set(res["seconds"])
    (metrics,) = out.glob("csv/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    best = [r["analyses/probe/best_accuracy"] for r in rows if r.get("analyses/probe/best_accuracy")]
    assert [float(b) for b in best] == [pytest.approx(probe["best_accuracy"])]
    assert any(r.get("analyses/erf/radius50_frac_last") for r in rows)


def test_only_rank_zero_runs_the_analyses(tmp_path, monkeypatch):
    import vvm.pipeline.steps

    monkeypatch.setattr(
        vvm.pipeline.steps, "is_rank_zero", lambda: False
    )  # this process: rank 1 of a DDP job
    job = compose_settings(
        ["model=r18", *TINY, "similarity.layers=[stem,fc]", "analyses=[erf]", "logger=none"], tmp_path
    )
    summary = run(job)
    assert summary["status"] == "ok" and "analyses" not in summary and "erf" not in summary["seconds"]
    assert not (tmp_path / "erf.npz").exists()


ANALYSES_ORDER = ["erf", "attention", "probe"]
ANY_FLAT = "no spatial layout (a flat output)"


def test_vit_job_logs_each_figure_to_wandb(tmp_path, monkeypatch):
    from test_wandb import history, offline_run

    monkeypatch.delenv("WANDB_MODE", raising=False)  # logger.mode: offline by default
    out = tmp_path / "run"
    overrides = [*TINY_VIT, *TINY, "analyses=[attention,probe]", "logger=wandb", f"logger.save_dir={out}"]
    res = run(compose_settings(overrides, out))
    assert res["status"] == "ok" and res["analyses"]["attention"]["applies"] is True
    assert list(res["analyses"]) == ["attention", "probe"] and not (out / "erf.npz").exists()
    att = np.load(out / "attention.npz")
    assert att["distance"].shape == (2, 3) and int(att["n_images"]) == 2  # 2 blocks x 3 heads
    run_dir, records = offline_run(out)
    rows = history(records)
    for name in ("attention", "probe"):
        (row,) = [r for r in rows if f"analyses/{name}/filenames" in r]
        assert row[f"analyses/{name}/_type"] == "images/separated"
        assert (run_dir / "files" / row[f"analyses/{name}/filenames"][0]).is_file()
    (scalars,) = [r for r in rows if "analyses/probe/best_accuracy" in r]
    assert scalars["analyses/probe/best_accuracy"] == pytest.approx(res["analyses"]["probe"]["best_accuracy"])
    assert scalars["analyses/attention/mean_distance_px"] > 0


# ------------------------------------------------------------------------------------------ the sweep
def fake_job(sweep_dir: Path, job: str, model: str, family: str, init: str, kinds: dict[str, int]) -> Path:
    """A finished job's files: result.json (with its analyses entries), cka.npz, and per analysis in ``kinds``
    its .npz with that many layers (0: the analysis did not apply, no file)."""
    d = sweep_dir / job
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(job))
    n = 4
    layers = np.array([f"{model}.l{i}" for i in range(n)])
    write_npz(d / "cka.npz", cka=np.eye(n), layers_x=layers, layers_y=layers, n_samples=np.array(16))
    entries = {}
    for kind, k in kinds.items():
        entries[kind] = {"applies": False, "note": "does not apply"} if k == 0 else {"seconds": 1.0}
        if k == 0:
            continue
        depth = (np.arange(k) + 1) / k
        names = np.array([f"l{i}" for i in range(k)])
        if kind == "erf":
            r = np.sort(rng.uniform(1, 16, k))
            arrays = dict(
                layers=names, radius50=r, radius90=r * 1.5, depth=depth, image_size=np.array([32, 32])
            )
        elif kind == "probe":
            arrays = dict(layers=names, accuracy=np.sort(rng.uniform(0.1, 1, k)), depth=depth)
        else:
            arrays = dict(blocks=names, distance=rng.uniform(2, 12, (k, 3)), depth=depth)
        write_npz(d / f"{kind}.npz", **arrays)
    res = {"model": model, "family": family, "init": init, "dataset": "digits", "status": "ok"}
    res.update(kernel="linear", n_samples=16, mean_cka=0.5, seconds={"total": 2.0}, analyses=entries)
    write_json(d / "result.json", res)
    return d


def test_sweep_summary_draws_one_figure_per_analysis(tmp_path):
    from vvm.sweep.summary import main

    sweep = tmp_path / "multirun" / "s"
    fake_job(sweep, "0", "r18", "resnet", "random", {"erf": 5, "attention": 0, "probe": 6})
    fake_job(sweep, "1", "r18", "resnet", "pretrained", {"erf": 5, "attention": 0, "probe": 6})
    fake_job(sweep, "2", "vit_tiny_patch16_224", "timm", "random", {"erf": 4, "attention": 3, "probe": 5})
    # `python -m vvm.sweep summary DIR` draws them from the files alone (as the end of a multirun does)
    assert main(["summary", str(sweep), "--no-wandb"]) == 0
    for kind in ANALYSES_ORDER:
        assert (sweep / f"summary-{kind}.png").read_bytes()[:4] == b"\x89PNG"
        assert (sweep / f"summary-{kind}.pdf").read_bytes()[:5] == b"%PDF-"
    assert (sweep / "summary.png").is_file() and (sweep / "summary.csv").is_file()


def test_sweep_analysis_records_and_wandb_images(tmp_path, monkeypatch):
    import vvm.loggers.logger
    from vvm.sweep.records import analysis_records, collect_jobs
    from vvm.sweep.summary import write_summary

    sweep = tmp_path / "s"
    fake_job(sweep, "0", "r18", "resnet", "random", {"attention": 0, "probe": 3})
    fake_job(sweep, "1", "vit_tiny_patch16_224", "timm", "random", {"probe": 4})
    fake_job(sweep, "2", "lambda_r26", "lambda_resnet", "pretrained", {})
    jobs = collect_jobs(sweep)
    probe = analysis_records(jobs, "probe")
    assert [(r["model"], r["family"], r["init"], len(r["accuracy"])) for r in probe] == [
        ("r18", "resnet", "random", 3),
        ("vit_tiny_patch16_224", "vit", "random", 4),  # a timm model: the family of its architecture
    ]
    # attention applied to no model: a record (for the figure's footnote) but no figure
    assert [r["model"] for r in analysis_records(jobs, "attention")] == ["r18"]
    for d in sweep.iterdir():
        res = json.loads((d / "result.json").read_text())
        res["config"] = {"logger": {"project": "p", "mode": "offline"}}
        write_json(d / "result.json", res)
    logged = {}
    monkeypatch.setattr(vvm.loggers.logger, "log_files_run", lambda **kw: logged.update(kw) or tmp_path)
    out = write_summary(sweep)
    assert set(logged["images"]) == {"summary/grid", "summary/probe"}
    assert logged["images"]["summary/probe"] == sweep / "summary-probe.png" == out["files"]["probe_png"]
    assert out["files"]["probe_pdf"] == sweep / "summary-probe.pdf"
    assert "attention_png" not in out["files"] and not (sweep / "summary-attention.png").exists()


# ------------------------------------------------------------------------------------------ acceptance
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_acceptance_command_vit_l32(tmp_path):
    """The issue's command, with fewer examples so that it fits a shared 2-core CPU (~10 minutes)."""
    out = tmp_path / "run"
    small = [
        "dataset.limit=16",
        "similarity.batch_size=16",
        "analysis.erf.n_images=2",
        "analysis.attention.n_images=2",
        "analysis.probe.batch_size=16",
    ]
    run_vvm(
        [
            "model=vit_l32",
            "init=random",
            "dataset=digits",
            "analyses=[erf,attention,probe]",
            *small,
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        timeout=1500,
    )
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and list(res["analyses"]) == ANALYSES_ORDER
    erf, att, probe = (np.load(out / f"{k}.npz") for k in ANALYSES_ORDER)
    assert {"layers", "maps", "radius50", "radius90", "n_images"} <= set(erf.files)
    assert erf["maps"].shape[1:] == (224, 224) and int(erf["n_images"]) == 2
    assert att["distance"].shape == (24, 16) and list(att["blocks"])[0] == "blocks.0.attn"
    assert {"layers", "accuracy", "ridge", "n_train", "n_eval"} <= set(probe.files)
    assert len(probe["layers"]) == len(res["layers_x"]) == 27
    for k in ANALYSES_ORDER:
        assert (out / f"{k}.png").stat().st_size > 0 and (out / f"{k}.pdf").stat().st_size > 0


def test_probe_plans_follow_the_job_seed():
    from vvm.analyses.probe import ProbeParams, probe_plans

    s = ProbeParams(max_train=50, batch_size=16)
    assert probe_plans(100, 30, s, seed=3) == probe_plans(100, 30, s, seed=3)
    assert probe_plans(100, 30, s, seed=3)[0] != probe_plans(100, 30, s, seed=4)[0]
    assert "seed" not in ProbeParams.__dataclass_fields__  # the job's `seed`, not a setting of its own
