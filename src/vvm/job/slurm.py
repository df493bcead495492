"""``hydra/launcher=slurm``: Hydra's submitit launcher with requests that fit the cluster it meets, and jobs that
come back after a preemption or a time limit.

Before anything is submitted, the launcher (``hydra_plugins.vvm_launcher.VVMSlurmLauncher``, Hydra's submitit
launcher with this module's checks) asks Slurm what the partition's nodes have (``sinfo``,
``scontrol show partition``: milliseconds) and fills in what the config left open (``null``):

- ``gpus_per_node``: ``trainer.devices`` when the trainer runs on GPUs (``trainer.accelerator=gpu``/``cuda``, or
  ``auto`` on a partition whose nodes have GPUs), else none;
- ``cpus_per_task``: up to :data:`CPUS_PER_TASK` (data-loading workers per process), as many as the largest node
  grants to each of its ``tasks_per_node`` tasks (``trainer.devices``: one task per DDP process);
- ``mem_gb`` (per node, as submitit counts it): :data:`GB_PER_CPU` for every CPU of the node's tasks, at most
  what the largest node has.

A value set on the command line (``hydra.launcher.cpus_per_task=4``) is used as it is; a request that no node of
the partition can meet (CPUs, memory, GPUs, nodes, time) is a :class:`~vvm.settings.ConfigError` naming the key,
before submission, instead of a job that stays pending forever.

Preemption and time limits (see the README's "More than one machine"): Slurm signals a job ``signal_delay_s``
before its time limit (submitit's USR2): submitit calls the launcher's ``checkpoint`` (the same job again)
and requeues it, at most ``max_num_timeout`` times. A SIGTERM (``scancel --signal=TERM``, a preemption's grace
period) stops the job as Ctrl-C does (its result.json says ``interrupted``) and, while Slurm still has it
RUNNING, requeues it (``scontrol requeue``); a job that was cancelled (``scancel``) or ran out of time stays
stopped. A requeued job runs again in the same directory: its training resumes from ``<key>.last.ckpt``, the
last saved epoch, with the random state it had, and its weights equal an uninterrupted run's.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from submitit.slurm import slurm as submitit_slurm
from submitit.slurm.slurm import SlurmInfoWatcher

from vvm.settings import ConfigError

log = logging.getLogger(__name__)

CPUS_PER_TASK = 8  # the most CPUs a task asks for by default (data-loading workers of one process)
GB_PER_CPU = 4  # memory asked for by default, per CPU of the tasks on a node
GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    """What a job can be given: the partition's nodes and its time limit (None: no limit)."""

    name: str
    nodes: tuple[Node, ...]
    max_time_min: int | None = None

    @property
    def largest(self) -> Node:
        return Node(
            "largest",
            max(n.cpus for n in self.nodes),
            max(n.mem_mb for n in self.nodes),
            max(n.gpus for n in self.nodes),
        )


# ---------------------------------------------------------------------------------------------- asking Slurm
def _slurm(*args: str) -> str:
    if shutil.which(args[0]) is None:
        raise ConfigError(
            f"hydra/launcher=slurm: Slurm's `{args[0]}` is not on this machine's PATH (submit from a login node "
            "of the cluster; scripts/slurm-local.sh up starts a one-node test cluster here)"
        )
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ConfigError(f"hydra/launcher=slurm: `{' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def gpu_count(gres: str) -> int:
    """GPUs in sinfo's ``%G`` (``gpu:4``, ``gpu:a100:2(S:0-1),shard:8``, ``(null)``)."""
    total = 0
    for entry in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", entry).split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def minutes(limit: str) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes``, ``UNLIMITED``) in whole minutes."""
    if limit.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = limit.rpartition("-")
    fields = [int(v) for v in rest.split(":")]
    if len(fields) == 1:
        h, m, s = 0, fields[0], 0
    else:
        h, m, s = ([0] * (3 - len(fields)) + fields)[-3:]
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def query_partition(name: str | None) -> Partition:
    """The nodes of partition ``name`` (None: the cluster's default partition) and its time limit."""
    shown = _slurm("scontrol", "show", "partition", "--oneliner")
    parts = {}
    for line in shown.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "PartitionName" in fields:
            parts[fields["PartitionName"]] = fields
    if name is None:
        default = [p for p, f in parts.items() if f.get("Default") == "YES"]
        if not default:
            raise ConfigError(
                "hydra.launcher.partition is not set and the cluster has no default partition: set "
                f"VVM_SLURM_PARTITION or hydra.launcher.partition (partitions: {', '.join(sorted(parts))})"
            )
        name = default[0]
    if name not in parts:
        raise ConfigError(
            f"hydra.launcher.partition={name!r} (VVM_SLURM_PARTITION) is not a partition of this cluster: "
            f"{', '.join(sorted(parts)) or 'none'}"
        )
    rows = _slurm("sinfo", "--noheader", "--Node", "--partition", name, "--format", "%N|%c|%m|%G")
    nodes = {}
    for row in rows.splitlines():
        node, cpus, mem, gres = row.strip().split("|")
        nodes[node] = Node(node, int(cpus), int(mem.rstrip("+")), gpu_count(gres))
    if not nodes:
        raise ConfigError(f"hydra.launcher.partition={name!r} has no nodes")
    return Partition(name, tuple(nodes.values()), minutes(parts[name].get("MaxTime", "UNLIMITED")))


# ---------------------------------------------------------------------------------------------- the requests
def wants_gpus(trainer: dict[str, Any], partition: Partition) -> bool:
    """Whether the trainer runs on GPUs there: ``gpu``/``cuda``, or ``auto`` where the nodes have GPUs."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    return accelerator in GPU_ACCELERATORS or (accelerator == "auto" and partition.largest.gpus > 0)


def fit_requests(params: dict[str, Any], trainer: dict[str, Any], partition: Partition) -> dict[str, Any]:
    """``params`` (the launcher's settings) with what was left open (null) filled in for ``partition``, then
    checked against its nodes: a request no node can meet raises :class:`ConfigError` naming the key."""
    out = dict(params)
    out["partition"] = partition.name
    tasks = int(out.get("tasks_per_node") or 1)
    big = partition.largest
    if out.get("gpus_per_node") is None:
        out["gpus_per_node"] = tasks if wants_gpus(trainer, partition) else 0
    if out.get("cpus_per_task") is None:
        out["cpus_per_task"] = max(1, min(CPUS_PER_TASK, big.cpus // tasks))
    if out.get("mem_gb") is None:
        out["mem_gb"] = max(1, min(GB_PER_CPU * out["cpus_per_task"] * tasks, big.mem_mb // 1024))
    errors = unmet(out, partition)
    if errors:
        raise ConfigError("hydra/launcher=slurm: " + "; ".join(errors))
    if not out["gpus_per_node"]:
        out["gpus_per_node"] = None  # no --gpus-per-node at all: a CPU partition refuses even 0 GPUs
    return out


def unmet(params: dict[str, Any], partition: Partition) -> list[str]:
    """What no node of ``partition`` can grant, one message per key (empty: every request fits some node)."""
    tasks = int(params.get("tasks_per_node") or 1)
    cpus = int(params["cpus_per_task"]) * tasks
    mem_mb = int(params["mem_gb"]) * 1024
    gpus = int(params.get("gpus_per_node") or 0)
    where = f"partition {partition.name!r}"
    big = partition.largest
    errors = []
    if not any(n.cpus >= cpus for n in partition.nodes):
        errors.append(
            f"hydra.launcher.cpus_per_task={params['cpus_per_task']} x {tasks} task(s) per node "
            f"(trainer.devices) = {cpus} CPUs, but the largest node of {where} has {big.cpus}: set "
            f"hydra.launcher.cpus_per_task={max(1, big.cpus // tasks)} or fewer trainer.devices"
        )
    if not any(n.mem_mb >= mem_mb for n in partition.nodes):
        errors.append(
            f"hydra.launcher.mem_gb={params['mem_gb']} (per node), but the largest node of {where} has "
            f"{big.mem_mb // 1024} GB: set hydra.launcher.mem_gb={max(1, big.mem_mb // 1024)} or less"
        )
    if gpus and not any(n.gpus >= gpus for n in partition.nodes):
        errors.append(
            f"hydra.launcher.gpus_per_node={gpus} (trainer.devices on GPUs), but the nodes of {where} have "
            f"{big.gpus or 'no'} GPUs: choose a GPU partition (VVM_SLURM_PARTITION) or trainer=cpu"
        )
    nodes = int(params.get("nodes") or 1)
    if nodes > len(partition.nodes):
        errors.append(
            f"hydra.launcher.nodes={nodes} (trainer.num_nodes), but {where} has {len(partition.nodes)} node(s)"
        )
    limit, timeout = partition.max_time_min, int(params.get("timeout_min") or 0)
    if limit is not None and timeout > limit:
        errors.append(f"hydra.launcher.timeout_min={timeout}, but {where} allows at most {limit} minutes")
    return errors


# ---------------------------------------------------------------------------------------------- in the job
class SigtermSeen:
    """SIGTERM while a Slurm job runs: remembered (the job's own handler, :func:`vvm.pipeline.steps.sigterm_as_interrupt`,
    calls this one and stops the job)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.received:
            log.warning("SIGTERM from Slurm (preemption or scancel --signal=TERM): stopping this job")
        self.received = True


def slurm_job_id() -> str | None:
    """This job's id as scontrol names it (``<array job>_<task>`` in an array), None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def job_state(job_id: str) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, timeout=60
    ).stdout
    match = re.search(r"\bJobState=(\S+)", shown)
    return match.group(1) if match else "UNKNOWN"


def requeue_if_running() -> bool:
    """Put this job back in the queue if Slurm still runs it (a signal alone, or a preemption's grace period):
    not after ``scancel`` or the time limit, which Slurm has already recorded. Rank 0 only."""
    job_id = slurm_job_id()
    if job_id is None or int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return False
    state = job_state(job_id)
    if state != "RUNNING":  # requeued already (COMPLETING, PENDING), cancelled, or out of time
        log.info("Slurm job %s is %s: no requeue from here", job_id, state)
        return False
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        log.error("could not requeue Slurm job %s: %s", job_id, done.stderr.strip())
        return False
    log.warning("requeued Slurm job %s: it resumes from its last saved epoch", job_id)
    return True


# ---------------------------------------------------------------------------------------------- job states
def accounting_enabled() -> bool:
    """Whether ``sacct`` answers here (a cluster with accounting storage, as most sites have)."""
    return subprocess.run(["sacct", "--noheader", "-j", "1"], capture_output=True, timeout=60).returncode == 0


def watch_with_squeue() -> None:
    """Where the cluster keeps no accounting (``sacct``: "accounting storage is disabled", as on the one-node test
    cluster), submitit would never learn that a job ended without a result (cancelled, killed): it would wait
    for ever. Its watcher then asks ``squeue --states=all`` instead, which knows every job slurmctld still holds
    (``MinJobAge`` after its end)."""
    if accounting_enabled() or isinstance(submitit_slurm.SlurmJob.watcher, SqueueWatcher):
        return
    submitit_slurm.SlurmJob.watcher = SqueueWatcher(delay_s=60)


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's watcher, reading ``squeue --states=all`` instead of ``sacct``."""

    def _make_command(self) -> list[str] | None:
        ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not ids:
            return None
        return [
            "squeue",
            "--noheader",
            "--array",
            "--states=all",
            "--format=%i|%T|%N",
            "--jobs",
            ",".join(ids),
        ]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        return super().read_info("JobID|State|NodeList\n" + text)


def joint_sbatch_line(params: dict[str, Any], sweep_dir: str, python: str = "python") -> str:
    """The ``sbatch`` line that runs the joint pass (``python -m vvm.joint``) over a finished sweep as a job of its
    own, with the sweep's partition, account, QoS, setup lines, time limit and one task's CPUs and memory (one
    GPU when the jobs had GPUs); its log goes to ``<sweep dir>/joint-<job id>.out``."""
    tasks = int(params.get("tasks_per_node") or 1)
    line = ["sbatch", f"--partition={params['partition']}", f"--job-name={params.get('name') or 'vvm'}-joint"]
    line += [f"--{key}={params[key]}" for key in ("account", "qos") if params.get(key)]
    line += [
        f"--time={params.get('timeout_min') or 60}",
        f"--cpus-per-task={params['cpus_per_task']}",
        f"--mem={max(1, int(params['mem_gb']) // tasks)}G",
        *(["--gpus-per-node=1"] if params.get("gpus_per_node") else []),
        f"--output={sweep_dir}/joint-%j.out",
    ]
    command = [*(params.get("setup") or []), f"{python} -m vvm.joint {shlex.quote(str(sweep_dir))}"]
    return shlex.join([*line, "--wrap", " && ".join(command)])


def log_requests(params: dict[str, Any], partition: Partition) -> None:
    log.info(
        "Slurm partition %s: %s node(s), %s task(s) per node, %s CPUs per task, %s GB per node, %s GPUs per node",
        partition.name,
        params.get("nodes"),
        params.get("tasks_per_node"),
        params["cpus_per_task"],
        params["mem_gb"],
        params["gpus_per_node"] or 0,
    )


__all__ = [
    "CPUS_PER_TASK",
    "GB_PER_CPU",
    "Node",
    "Partition",
    "SigtermSeen",
    "SqueueWatcher",
    "fit_requests",
    "gpu_count",
    "joint_sbatch_line",
    "log_requests",
    "minutes",
    "query_partition",
    "requeue_if_running",
    "unmet",
    "watch_with_squeue",
    "wants_gpus",
]
