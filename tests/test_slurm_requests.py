"""hydra/launcher=slurm's requests without a cluster: what vvm fills in for a partition's nodes, and the errors
that name the key when no node can meet a request (the same functions run against a real Slurm in
tests/test_slurm.py)."""

from __future__ import annotations

import shlex

import pytest

from vvm.job.slurm import Node, Partition, fit_requests, gpu_count, joint_sbatch_line, minutes
from vvm.schema import compose_config as compose
from vvm.settings import ConfigError

SMALL = Partition("debug", (Node("vm", 2, 23081, 0),))  # this machine, as scripts/slurm-local.sh declares it
GPUS = Partition("gpu", (Node("g1", 64, 512_000, 4), Node("g2", 32, 256_000, 8)), max_time_min=2880)


def _params(**kw):
    base = {"partition": None, "tasks_per_node": 1, "nodes": 1, "timeout_min": 240}
    return {**base, "gpus_per_node": None, "cpus_per_task": None, "mem_gb": None, **kw}


def test_gres_and_time_limits_as_slurm_prints_them():
    assert gpu_count("(null)") == 0 and gpu_count("gpu:4") == 4
    assert gpu_count("gpu:a100:2(S:0-1),shard:8") == 2 and gpu_count("gpu:a100:2,gpu:v100:1") == 3
    assert minutes("UNLIMITED") is None and minutes("INFINITE") is None
    assert minutes("30") == 30 and minutes("2:00:00") == 120 and minutes("1-00:00:00") == 1440
    assert minutes("1-02:30:10") == 1591 and minutes("10:00") == 10


def test_a_cpu_trainer_on_a_small_cpu_node_asks_for_what_it_has():
    got = fit_requests(_params(), {"accelerator": "auto", "devices": 1}, SMALL)
    assert got["partition"] == "debug" and got["gpus_per_node"] is None  # no --gpus-per-node at all
    assert got["cpus_per_task"] == 2 and got["mem_gb"] == 8  # min(8, 2 / 1) CPUs, 4 GB each
    ddp = fit_requests(_params(tasks_per_node=2), {"accelerator": "cpu", "devices": 2}, SMALL)
    assert ddp["cpus_per_task"] == 1 and ddp["mem_gb"] == 8


def test_gpus_only_when_the_trainer_runs_on_gpus():
    auto = fit_requests(_params(tasks_per_node=4), {"accelerator": "auto", "devices": 4}, GPUS)
    assert auto["gpus_per_node"] == 4 and auto["cpus_per_task"] == 8 and auto["mem_gb"] == 128
    cpu = fit_requests(_params(), {"accelerator": "cpu", "devices": 1}, GPUS)
    assert cpu["gpus_per_node"] is None
    with pytest.raises(ConfigError, match=r"hydra.launcher.gpus_per_node=1 .*no GPUs.*trainer=cpu"):
        fit_requests(_params(), {"accelerator": "gpu", "devices": 1}, SMALL)


def test_explicit_values_are_kept_and_checked_naming_the_key():
    kept = fit_requests(_params(cpus_per_task=1, mem_gb=2), {"accelerator": "cpu"}, SMALL)
    assert kept["cpus_per_task"] == 1 and kept["mem_gb"] == 2
    with pytest.raises(ConfigError) as e:
        fit_requests(_params(cpus_per_task=8, mem_gb=64, tasks_per_node=2), {"accelerator": "cpu"}, SMALL)
    msg = str(e.value)
    assert "hydra.launcher.cpus_per_task=8 x 2 task(s) per node (trainer.devices) = 16 CPUs" in msg
    assert "largest node of partition 'debug' has 2" in msg and "hydra.launcher.cpus_per_task=1" in msg
    assert "hydra.launcher.mem_gb=64 (per node)" in msg and "has 22 GB" in msg
    with pytest.raises(ConfigError, match=r"hydra.launcher.nodes=2 \(trainer.num_nodes\).*1 node"):
        fit_requests(_params(nodes=2), {"accelerator": "cpu"}, SMALL)
    with pytest.raises(ConfigError, match=r"hydra.launcher.timeout_min=3000.*at most 2880 minutes"):
        fit_requests(_params(timeout_min=3000), {"accelerator": "gpu", "devices": 1}, GPUS)
    # a request that only the larger node meets is fine: some node must meet all of it
    big = fit_requests(_params(gpus_per_node=8, cpus_per_task=4), {"accelerator": "gpu"}, GPUS)
    assert big["gpus_per_node"] == 8


def test_the_launcher_config_leaves_the_requests_to_vvm(monkeypatch):
    monkeypatch.setenv("VVM_SLURM_PARTITION", "gpu-long")
    lc = compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"]).hydra.launcher
    assert lc._target_ == "hydra_plugins.vvm_launcher.VVMSlurmLauncher" and lc.partition == "gpu-long"
    assert lc.tasks_per_node == 4 and lc.gpus_per_node is None and lc.cpus_per_task is None
    assert lc.mem_gb is None and lc.max_num_timeout > 0  # a time limit requeues the job
    override = compose(["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=3", "hydra.launcher.mem_gb=5"])
    assert override.hydra.launcher.cpus_per_task == 3 and override.hydra.launcher.mem_gb == 5


def test_the_joint_pass_line_uses_the_sweeps_site_settings():
    params = fit_requests(
        _params(account="lab", qos="short", setup=["module load cuda"], tasks_per_node=2),
        {"accelerator": "gpu", "devices": 2},
        GPUS,
    )
    args = shlex.split(joint_sbatch_line(params, "/runs/my sweep", "/env/bin/python"))
    assert args[:3] == ["sbatch", "--partition=gpu", "--job-name=vvm-joint"]
    assert {"--account=lab", "--qos=short", "--time=240", "--cpus-per-task=8", "--gpus-per-node=1"} <= set(
        args
    )
    assert "--mem=32G" in args  # one task's share of the 64 GB asked for the node (2 tasks of 8 CPUs)
    assert args[-2:] == ["--wrap", "module load cuda && /env/bin/python -m vvm.joint '/runs/my sweep'"]
    cpu = joint_sbatch_line(fit_requests(_params(name="vvm"), {"accelerator": "cpu"}, SMALL), "s")
    assert "--gpus-per-node=1" not in cpu and "--account" not in cpu
