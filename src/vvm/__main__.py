"""``python -m vvm`` / ``vvm``: compose the configs shipped in the package (``vvm/conf``, found by Hydra as
``pkg://vvm/conf``, so a wheel works from any directory) against vvm's typed schema, and run one job (or a sweep
with ``-m``) through :func:`vvm.job.task.run_job`."""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from vvm.schema import CONFIG_DIR, override_errors, register_configs, rename_overrides

register_configs()  # the schema must be in Hydra's ConfigStore before it composes


def share_config_store() -> None:
    """Hydra (1.3) deep-copies its config repository for every compose and for every group ``--help`` lists
    (126 times), and with it the ConfigStore singleton, every schema vvm registers included: 6 of ``--help``'s 12
    s here. Copies share the one store instead, as Hydra's own fix does (facebookresearch/hydra#2928: the
    structured source fetches ``ConfigStore.instance()``); nothing is shared that Hydra changes, as it
    deep-copies each node it loads from the store (``ConfigStore.load``)."""
    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


share_config_store()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    # in a multirun (-m) a failing job is recorded in its result.json and the sweep goes on (see vvm.job.task)
    from vvm.job.task import run_job

    summary = run_job(cfg)
    return summary.get("mean_cka") if summary else None


def main() -> None:
    # a renamed key (similarity.batch_size) is taken as its new one (similarity.batch_size), with a warning
    sys.argv[1:] = rename_overrides(sys.argv[1:])
    errors = override_errors(sys.argv[1:], CONFIG_DIR)
    if errors:  # Hydra alone would only say that the key is not in the config, or to add +
        sys.exit("vvm: " + "; ".join(errors))
    _hydra_main()


if __name__ == "__main__":
    main()
