"""The last rough edges (issue 30): a damaged result file of any measure skips its job with a note, a hostile
file is refused in vvm's own words (never a library's advice to load it unsafely), and a record that says
nothing never reads as "None"."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vvm.cka import JointCKA, JointSimilarity, StreamingCKA
from vvm.io import write_json, write_npz

UNSAFE_ADVICE = ("allow_pickle", "weights_only")


def measured_job(sweep_dir: Path, job: str) -> Path:
    """A finished r18 job of a sweep that measured CKA, RSA and kNN (result.json and the three .npz)."""
    from test_sweep import fake_job

    d = fake_job(sweep_dir, job, "r18", "random")
    result = json.loads((d / "result.json").read_text())
    write_json(d / "result.json", {**result, "measures": {"cka": 0.5, "rsa": 0.4, "knn": 0.3}})
    layers = np.array([f"r18.l{i}" for i in range(4)])
    for name in ("rsa", "knn"):
        write_npz(
            d / f"{name}.npz", matrix=np.eye(4), stderr=np.zeros((4, 4)), layers_x=layers, layers_y=layers
        )
    return d


def hostile_npz(path: Path) -> None:
    """An .npz whose array holds pickled objects: loading it with ``allow_pickle=True`` would run code."""
    np.savez(path, matrix=np.array([{"x": 1}, None], dtype=object))


# ---------------------------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("measure", ["rsa", "knn"])
def test_a_damaged_measure_file_skips_its_job_with_a_note(tmp_path, measure, caplog):
    from vvm.sweep.records import collect_jobs, read_jobs
    from vvm.sweep.summary import write_summary

    sweep_dir = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    for job in "012":
        measured_job(sweep_dir, job)
    path = sweep_dir / "0" / f"{measure}.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated: zipfile.BadZipFile
    hostile_npz(sweep_dir / "1" / f"{measure}.npz")
    jobs = {j.job: j for j in collect_jobs(sweep_dir)}
    for job in "01":
        assert jobs[job].status == "incomplete", jobs[job]
        assert f"{measure}.npz is missing or unreadable" in jobs[job].error
        assert not any(a in jobs[job].error for a in UNSAFE_ADVICE), jobs[job].error
    assert "damaged or not an .npz file (BadZipFile)" in jobs["0"].error
    assert "pickled Python objects, which vvm never loads" in jobs["1"].error
    assert jobs["2"].status == "ok" and jobs["2"].matrices[measure].shape == (4, 4)
    assert jobs["2"].matrix.shape == (4, 4)

    with caplog.at_level(logging.WARNING, logger="vvm.sweep"):
        out = write_summary(sweep_dir, log_wandb=False)
    assert [j.job for j in out["failed"]] == ["0", "1"]
    assert f"job 0 (r18, random) incomplete: {measure}.npz is missing or unreadable" in caplog.text
    _, notes = read_jobs(sweep_dir)  # the joint pass's reading: one note per skipped job
    assert [n.split(" (")[0] for n in notes[:2]] == ["job 0", "job 1"], notes
    assert all(f"{measure}.npz is missing or unreadable" in n for n in notes[:2])


def test_a_damaged_analysis_file_is_left_out_of_the_sweep_figure(tmp_path):
    from vvm.sweep.records import analysis_records, collect_jobs

    sweep_dir = tmp_path / "sweep"
    d = measured_job(sweep_dir, "0")
    write_json(d / "result.json", {**json.loads((d / "result.json").read_text()), "analyses": {"erf": {}}})
    (d / "erf.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (rec,) = analysis_records(collect_jobs(sweep_dir), "erf")
    assert rec["model"] == "r18" and "layers" not in rec


@pytest.mark.parametrize("content", ["null", '{"status": "incomplete"}', '{"status": null}'])
def test_a_result_that_says_nothing_never_reads_as_none(tmp_path, content, caplog):
    from test_sweep import fake_job

    from vvm.sweep.records import collect_jobs
    from vvm.sweep.summary import write_summary

    d = fake_job(tmp_path / "sweep", "0", "r18", "random")
    (d / "result.json").write_text(content)
    (job,) = collect_jobs(tmp_path / "sweep")
    assert job.status == "incomplete" and job.error and "None" not in job.error
    with caplog.at_level(logging.WARNING, logger="vvm.sweep"):
        write_summary(tmp_path / "sweep", log_wandb=False)
    assert (
        "incomplete: None" not in caplog.text and "job 0 (r18, random) incomplete: result.json" in caplog.text
    )


def test_load_npz_names_the_file_in_its_own_words(tmp_path):
    from vvm.io import UnreadableFile, load_npz

    hostile_npz(tmp_path / "a.npz")
    (tmp_path / "b.npz").write_bytes(pickle.dumps({"x": 1}))  # a pickle, not an npz
    for name in ("a.npz", "b.npz", "gone.npz"):
        with pytest.raises(UnreadableFile) as e:
            load_npz(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and not any(a in str(e.value) for a in UNSAFE_ADVICE)


# ---------------------------------------------------------------------------------------------- item 3
class _Hostile:
    """Unpickling this creates ``marker``: it would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["r18-x.last.ckpt", "r18-x.ckpt"])
@pytest.mark.parametrize("damage", ["hostile", "truncated"])
def test_a_damaged_or_hostile_cache_file_is_moved_aside_in_vvms_words(tmp_path, name, damage, caplog):
    import torch

    from vvm.pipeline import weights

    path, marker = tmp_path / name, tmp_path / "code-ran"
    torch.save({"state_dict": {"a": torch.zeros(100)}, "x": _Hostile(marker)}, path)
    if damage == "truncated":
        torch.save({"state_dict": {"a": torch.zeros(100)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    with caplog.at_level(logging.WARNING, logger="vvm.pipeline.weights"):
        assert not weights.readable_cache_file(path)
    assert not path.exists() and len(list(tmp_path.glob(f"{name}.corrupt-*"))) == 1
    assert not marker.exists()
    assert "moved it to" in caplog.text and not any(a in caplog.text for a in UNSAFE_ADVICE), caplog.text
    if damage == "hostile":
        assert "which vvm never loads" in caplog.text and "(it names " in caplog.text
    last = name.endswith(".last.ckpt")
    assert ("resumes from its last saved epoch" if last else "trained again") in caplog.text


# ---------------------------------------------------------------------------------------------- item 2
def _in_child(code: str, limit: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a child process whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE: what a full disk
    or a quota looks like to a writer; Python ignores SIGXFSZ, so a write past it is ``OSError`` errno 27)."""
    import vvm

    tests = Path(__file__).parent
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(vvm.__file__).parents[1]), str(tests)])}
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


def test_a_write_past_the_file_size_limit_names_the_file(tmp_path):
    code = (
        "from vvm.io import write_bytes\n"
        "try:\n"
        "    write_bytes('big.bin', bytes(50_000))\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno, e.filename, '|', e)\n"
    )
    done = _in_child(code, 10_000, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.startswith("OSError 27 big.bin |")
        and "could not write big.bin (File too large)" in done.stdout
    )
    assert not list(tmp_path.iterdir())  # no half file, no temporary left


@pytest.mark.slow
def test_results_are_written_before_any_figure(tmp_path):
    """A job whose figures hit the file-size limit: every measure's .npz is written, the job fails naming the
    figure, result.json says so."""
    code = (
        "from compose import compose_settings\n"
        "from test_measures_cli import SMALL\n"
        "import vvm.pipeline.steps\n"
        "job = compose_settings([*SMALL, 'measures=[cka,rsa,knn]', 'measure.knn.k=5'], 'run')\n"
        "try:\n"
        "    vvm.pipeline.steps.run(job)\n"
        "except OSError as e:\n"
        "    print('raised', e)\n"
    )
    # 66 kB: every .npz fits (rsa's rdms.npz, the largest, is 64 kB here), no figure does (the smallest .png 69 kB)
    done = _in_child(code, 66_000, tmp_path)
    assert done.returncode == 0 and "raised" in done.stdout, done.stderr[-3000:]
    run = tmp_path / "run"
    assert {p.name for p in run.glob("*.npz")} == {"cka.npz", "rsa.npz", "knn.npz", "rdms.npz"}
    res = json.loads((run / "result.json").read_text())
    assert res["status"] == "failed" and "File too large" in res["error"] and ".png" in res["error"], res[
        "error"
    ]


# ---------------------------------------------------------------------------------------------- item 5
@pytest.mark.slow  # it imports torch in a fresh process (4 s on a quiet machine, half a minute under load)
def test_main_help_imports_no_lightning(tmp_path):
    """``python -m vvm --help`` lists the config groups and the composed config without Lightning (it took 16 s
    of a quiet machine's 16 s there): the schema lists the datasets' settings from vvm.settings.datasets."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['vvm', '--help']\n"
        "try:\n"
        "    runpy.run_module('vvm', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = ('pytorch_lightning', 'lightning', 'lightning_fabric', 'timm')\n"
        "print('IMPORTED', [m for m in heavy if m in sys.modules])\n"
    )
    done = _in_child(code, 10_000_000, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = next(line for line in done.stdout.splitlines() if line.strip().startswith("dataset: "))
    assert set(listed.split(": ", 1)[1].split(", ")) >= {
        "cifar10",
        "cifar100",
        "digits",
        "imagenet",
        "synthetic",
    }
    assert "IMPORTED []" in done.stdout, done.stdout[-500:]


# ---------------------------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("override", ["seed=-1", "seed=4294967296", "model.seed=-2"])
def test_a_seed_numpy_cannot_take_is_refused_naming_its_key(tmp_path, override):
    from helpers import compose_error

    err = compose_error(["dataset=digits", override], tmp_path)
    key = override.split("=")[0]
    assert f"{key}={override.split('=')[1]} must be" in err and "2**32" in err, err


@pytest.mark.parametrize(
    "device, said",
    [
        ("foo", "--device='foo' is not a device: give cpu, cuda or cuda:<index>"),
        ("meta", "--device='meta': the joint pass runs on cpu or cuda"),
        ("cuda", "--device='cuda': this machine has no CUDA GPU; give --device cpu"),
        ("cuda:1", "--device='cuda:1': this machine has no CUDA GPU"),
    ],
)
def test_joint_device_errors_are_one_line(tmp_path, capsys, monkeypatch, device, said):
    import torch
    from test_cli_errors import joint, stored_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(
        "vvm.joint.joint_pass.rebuild_models", lambda *a: pytest.fail("a model was rebuilt first")
    )
    sweep = tmp_path / "sweep"
    stored_job(sweep, "0", seed=0)
    err = joint(capsys, str(sweep), "--device", device, "--out", str(tmp_path / "j"))
    assert said in err, err


def test_an_interrupt_ends_the_job_without_a_traceback(tmp_path, monkeypatch):
    """Ctrl-C during an analysis (no Lightning there to turn it into SystemExit): pipeline.run records
    ``interrupted`` and re-raises; the job then exits with status 130, no raw KeyboardInterrupt traceback."""
    from compose import compose_cfg

    import vvm.pipeline.steps
    from vvm.job import task as job

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(vvm.pipeline.steps, "run", interrupted)
    monkeypatch.setattr(job, "resume_command", lambda: "python -m vvm")
    with pytest.raises(SystemExit) as e:
        job.run_job(compose_cfg(["dataset=digits", "logger=none"], tmp_path))
    assert e.value.code == 130


@pytest.mark.parametrize("content", ["[]", "null", '"ok"'])
def test_resume_runs_a_job_whose_result_json_is_not_a_record_again(tmp_path, content, caplog):
    from vvm.job.task import completed_result

    (tmp_path / "result.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="vvm.job"):
        assert completed_result(tmp_path, {"seed": 0}) is None
    assert "holds no job's record" in caplog.text and "computing it again" in caplog.text


# ---------------------------------------------------------------------------------------------- item 4
def test_joint_says_which_seed_the_pass_used_and_why_a_block_differs(tmp_path):
    from test_cli_errors import stored_job

    from vvm.joint.joint_pass import pass_settings
    from vvm.sweep.records import read_jobs

    sweep = tmp_path / "sweep"
    for job in range(2):
        stored_job(sweep, str(job), seed=job)
    jobs, _ = read_jobs(sweep)
    settings, notes = pass_settings(jobs, {})
    assert settings.seed == 0
    assert notes[0] == (
        "the data order (the examples in each batch, the same for every model) is seed 0 (job 0's seed)"
    )
    assert len(notes) == 2 and notes[1].startswith("job 1 (") and "its own map came from seed 1" in notes[1]
    assert "sampling noise of other batches" in notes[1]
    settings, notes = pass_settings(jobs, {"seed": 1, "batch_size": 12})
    assert settings.seed == 1 and notes[0].endswith("is seed 1 (from --seed)")
    assert [n.split(" (")[0] for n in notes[1:]] == ["job 0", "job 1"]
    assert (
        "seed 0, similarity.batch_size=16, here 12" in notes[1]
        and "from similarity.batch_size=16, here 12" in notes[2]
    )


# ---------------------------------------------------------------------------------------------- item 7
def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))


@pytest.mark.parametrize(
    "call, error, said",
    [
        (lambda: JointCKA([_net(), _net()]), TypeError, "models must be a mapping {name: network}, not a list"),
        (lambda: JointCKA({"a": lambda x: x}), TypeError, "models['a'] must be a torch.nn.Module"),
        (lambda: StreamingCKA("resnet18"), TypeError, "model must be a torch.nn.Module (a built network"),
        (lambda: StreamingCKA(_net(), 5), TypeError, "layers must be a preset (blocks, all, term_project)"),
        (lambda: StreamingCKA(_net(), other="r18"), TypeError, "other must be a torch.nn.Module"),
        (lambda: StreamingCKA(_net(), ["0"], other=_net().to("meta")), ValueError,
         "the networks are on different devices (model on cpu, other on meta)"),
        (lambda: JointCKA({"a": _net(), "b": _net().to("meta")}, ["0"]), ValueError,
         "different devices (models['a'] on cpu, models['b'] on meta)"),
        (lambda: JointSimilarity([_net()], measures=["cka"]), TypeError, "models must be a mapping"),
    ],
)  # fmt: skip
def test_api_misuse_is_one_sentence_naming_the_argument(call, error, said):
    with pytest.raises(error) as e:
        call()
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_plain_network_with_a_preset_warns_once():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = StreamingCKA(_net(), "all")
    dry = [w for w in caught if "dry run on the meta device failed" in str(w.message)]
    assert len(dry) == 1, [str(w.message) for w in caught]
    assert m.layers_x == ["0", "1", "2"]


# ---------------------------------------------------------------------------------------------- item 8
def _pass(metric, model, batches):
    with metric.track(), torch.no_grad():
        for feats in batches:
            model(feats)
    return metric.compute()


def test_features_too_large_to_square_in_float32_are_measured_in_float64():
    """A layer reaching 1e18 (its float32 Gram would overflow: 1e36 x 300 features): its Gram is computed in
    float64, with one warning that says the training diverged, and CKA (scale-invariant) equals the float64
    reference of the unscaled features; RSA equals the unscaled pass's."""
    import reference
    from helpers import Replay, make_layer_batches

    from vvm.cka import StreamingSimilarity

    batches = make_layer_batches([16, 16, 12], [5, 300, 4], seed=0)
    huge = [[f[0], f[1] * 1e18, f[2]] for f in batches]
    assert not torch.isfinite(huge[0][1] @ huge[0][1].T).all()  # float32 cannot square them
    model = Replay(3)
    with pytest.warns(
        UserWarning, match=r"layer 'l1' has features up to [0-9.e+]+, too large.*training diverged"
    ) as w:
        res = _pass(StreamingCKA(model, "blocks"), model, huge)
    assert sum("too large to square" in str(x.message) for x in w) == 1
    ref = reference.minibatch_cka(batches, batches)
    np.testing.assert_allclose(res.matrix.numpy(), ref, atol=1e-6)
    with pytest.warns(UserWarning, match="too large to square"):
        big = _pass(StreamingSimilarity(model, "blocks", measures=["cka", "rsa"]), model, huge)
    small = _pass(StreamingSimilarity(model, "blocks", measures=["cka", "rsa"]), model, batches)
    for m in ("cka", "rsa"):
        np.testing.assert_allclose(big[m].matrix.numpy(), small[m].matrix.numpy(), atol=1e-5)
