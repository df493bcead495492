"""vvm's Hydra configs (``pkg://vvm.conf``): the yaml files of each config group, on the typed schema of vvm.settings."""
