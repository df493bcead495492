"""``python -m vvm`` / ``vvm``: compose conf/ with Hydra and run one job (or a sweep with ``-m``) through
:func:`vvm.job.run_job`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


def config_dir() -> Path:
    """conf/ at the repository root, found from this file (not the working directory); VVM_CONFIG_DIR wins."""
    env = os.environ.get("VVM_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "conf")
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError(
        f"vvm's Hydra configs were not found (looked in {', '.join(map(str, candidates))}); install vvm from a "
        "checkout with `make install` (editable), or set VVM_CONFIG_DIR to the conf/ folder"
    )


CONFIG_DIR = config_dir()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    # in a multirun (-m) a failing job is recorded in its result.json and the sweep goes on (see vvm.job)
    from vvm.job import run_job

    summary = run_job(cfg)
    return summary.get("mean_cka") if summary else None


def main() -> None:
    from vvm.config import moved_overrides

    errors = moved_overrides(sys.argv[1:])
    if not errors:
        from vvm.validate import unknown_overrides

        errors = unknown_overrides(sys.argv[1:], CONFIG_DIR)
    if errors:  # Hydra would only say that the key is not in the config (or to add +)
        sys.exit("vvm: " + "; ".join(errors))
    _hydra_main()


if __name__ == "__main__":
    main()
