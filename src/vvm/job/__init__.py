"""One job as Hydra runs it (the job-assembly layer): :mod:`.task` (the composed config turned into settings
once, resume, failures recorded in a multirun, DDP inside a local sweep) and :mod:`.slurm` (what
``hydra/launcher=slurm`` adds to submitit: requests fitted to the partition, requeue on SIGTERM)."""
