"""What reaches a researcher's logger: :mod:`.logger` (Lightning's W&B/CSV loggers built from settings, the
measures' and analyses' values, tables and images, the runs made of files) and :mod:`.wandb_run` (W&B's mode,
the sweep's group, the artifact, where the run is)."""
