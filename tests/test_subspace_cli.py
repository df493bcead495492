"""The CCA family, linear regression and Procrustes through vvm's generic paths, keyed by name like RSA and kNN:
a job's files, ``vvm.diff --measure``, the sweep summary, W&B, and ``vvm.joint --measures``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from compose import compose_settings
from helpers import SMALL_MEASURES_JOB as SMALL

from vvm.io import load_npz

NAMES = ("cca", "svcca", "pwcca", "linreg", "procrustes")


def test_loggers_get_each_new_measure():
    import torch
    from helpers import WandbLogger

    from vvm.cka.measures import MeasureResult
    from vvm.loggers.logger import log_measure

    for name in NAMES:
        res = MeasureResult(torch.eye(2), torch.zeros(2, 2), ["a", "b"], ["a", "b"], 8, 2, name, {"n": 8})
        logger = WandbLogger()
        log_measure(logger, res, measure=name, stage="final", image=f"{name}.png", step=0)
        assert [c if c[0] != "image" else c[:2] for c in logger.calls] == [  # the caption: test_measures_cli
            ("metrics", [f"{name}/mean_offdiag", f"{name}/n_samples"]),
            ("table", f"{name}/table", ["layer_x", "layer_y", "i", "j", name, "stderr"]),
            ("image", f"{name}/heatmap"),
        ]


@pytest.mark.slow
def test_jobs_diff_summary_and_joint_pick_up_every_new_measure(tmp_path):
    """Two random-init jobs with every new measure: each writes its files; vvm.diff pairs them per measure; the
    sweep summary has a column and a figure per measure; the joint pass's diagonal blocks are the jobs' own."""
    from vvm.diff import main as diff
    from vvm.joint.joint_pass import main as joint
    from vvm.pipeline.steps import run
    from vvm.sweep.summary import write_summary

    sweep = tmp_path / "multirun" / "a" / "b"
    measures = f"measures=[cka,{','.join(NAMES)}]"
    for job, seed in (("0", 0), ("1", 1)):
        summary = run(compose_settings([*SMALL, measures, "measure.svcca.keep=0.9", f"model.seed={seed}"],
                                       sweep / job))  # fmt: skip
        assert summary["status"] == "ok", summary.get("error")
    res = json.loads((sweep / "0" / "result.json").read_text())
    assert set(res["measures"]) == {"cka", *NAMES}
    for name in NAMES:
        z = load_npz(sweep / "0" / f"{name}.npz")
        assert z["matrix"].shape == (10, 10) and int(z["pool_size"]) == 40 and z["measure"] == name
        np.testing.assert_allclose(np.diag(z["matrix"]), 1.0, atol=1e-9)
        diff([str(sweep / "0"), str(sweep / "1"), "--out", str(tmp_path / "d"), "--measure", name])
        d = load_npz(tmp_path / "d" / f"diff-{name}.npz")
        assert bool(d["paired"]) and np.isfinite(d["diff"]).any()
    assert load_npz(sweep / "0" / "svcca.npz")["keep"] == 0.9
    out = write_summary(sweep, log_wandb=False)
    header = (sweep / "summary.csv").read_text().splitlines()[0].split(",")
    assert all(f"mean_{n}" in header and f"{n}_png" in out["files"] for n in NAMES)
    assert joint([str(sweep), "--measures", ",".join(NAMES), "--logger", "none", "--no-progress"]) == 0
    for name in NAMES:
        z = load_npz(sweep / "joint" / f"joint-{name}.npz")
        for k, job in enumerate(("0", "1")):
            rows = np.flatnonzero(z["model_index"] == k)
            own = load_npz(sweep / job / f"{name}.npz")["matrix"]
            np.testing.assert_allclose(z["matrix"][np.ix_(rows, rows)], own, atol=1e-9, rtol=0, err_msg=name)
