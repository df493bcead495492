"""vvm's Slurm launcher as a Hydra plugin (Hydra instantiates launchers only from the ``hydra_plugins`` package;
``hydra/launcher=slurm`` names it). What it does is :mod:`vvm.job.slurm`'s: imported when a sweep is launched or a
job starts, never when Hydra scans its plugins (every ``python -m vvm`` does)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)


class VVMSlurmLauncher(SlurmLauncher):
    """Hydra's submitit Slurm launcher, with requests fitted to the partition before submission
    (:func:`vvm.job.slurm.fit_requests`), and a job that a SIGTERM stops requeued (:func:`vvm.job.slurm.requeue_if_running`)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from omegaconf import OmegaConf

        from vvm.job.slurm import (
            fit_requests,
            joint_sbatch_line,
            log_requests,
            query_partition,
            watch_with_squeue,
        )

        assert self.config is not None
        trainer = OmegaConf.to_container(self.config.trainer, resolve=True)
        partition = query_partition(self.params.get("partition"))
        self.params = fit_requests(self.params, trainer, partition)
        log_requests(self.params, partition)
        watch_with_squeue()
        returns = super().launch(job_overrides, initial_job_idx)
        line = joint_sbatch_line(self.params, str(self.config.hydra.sweep.dir), sys.executable)
        log.info("the joint pass of this sweep as a Slurm job: %s", line)
        return returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from vvm.job.slurm import SigtermSeen, requeue_if_running

        sigterm = SigtermSeen()
        previous = signal.signal(signal.SIGTERM, sigterm)
        try:
            return super().__call__(*args, **kwargs)
        except BaseException:
            if sigterm.received:
                requeue_if_running()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
