"""vvm as a new user gets it: a wheel installed into a fresh environment, run from another directory; and the
layers below the job importing without the config libraries (the GPU machine has none of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_LIBRARIES = ("omegaconf", "hydra", "antlr4")


def python_without_config_libraries(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A command line and environment for this interpreter where omegaconf, hydra and antlr4 are not installed:
    no site processing (``-S``), and a copy of site-packages made of links to everything else."""
    import site

    farm = tmp_path / "site-packages"
    farm.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            name = entry.name.lower().replace("-", "_")
            if (
                not name.startswith(CONFIG_LIBRARIES + ("hydra_core", "antlr4_python3"))
                and entry.suffix != ".pth"
            ):
                target = farm / entry.name
                if not target.exists():
                    target.symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{farm}"}
    return [sys.executable, "-S"], env


@pytest.mark.slow  # 11-16 s of imports; test_architecture checks the same rule in the source, in the default run
def test_engine_models_data_and_the_job_below_the_config_import_without_hydra(tmp_path):
    """``vvm.cka``, ``vvm.models``, ``vvm.data``, ``vvm.settings``, ``vvm.pipeline.weights``, ``vvm.pipeline.steps`` import
    with omegaconf, hydra and antlr4 not installed (a GPU machine without them); the config layer does need
    them."""
    python, env = python_without_config_libraries(tmp_path)
    below = "vvm.cka vvm.models vvm.data vvm.settings vvm.train.fit vvm.callbacks vvm.pipeline.weights vvm.pipeline.steps"
    code = f"import importlib.util as u\nassert u.find_spec('omegaconf') is None\nfor m in {below.split()!r}: __import__(m)\nprint('ok')"
    proc = subprocess.run([*python, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    proc = subprocess.run([*python, "-c", "import vvm.schema"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "No module named" in proc.stderr


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_runs_from_another_directory(tmp_path):
    """Build the wheel, install it (without the checkout) into a new virtual environment that reuses this
    interpreter's packages for the dependencies, and run one job from an empty directory."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = dist.glob("vvm-*.whl")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import vvm; print(vvm.__file__)"], cwd=elsewhere, capture_output=True, text=True
    )
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout, (
        where
    )  # the wheel, not the checkout
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["WANDB_MODE"] = "offline"
    out = elsewhere / "run"
    proc = subprocess.run(
        [str(python), "-m", "vvm", "model=r18", "init=random", "dataset=digits", "dataset.limit=64",
         "logger=none", f"hydra.run.dir={out}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["n_samples"] == 64
    assert {"cka.npz", "cka.png", "cka.pdf", "result.json"} <= {p.name for p in out.iterdir()}
    assert "vvm: job ok in" in (out / "vvm.log").read_text()  # the job's report, in its log
    for script in ("vvm", "vvm-diff", "vvm-joint", "vvm-sweep"):  # the console scripts beside python -m
        help_ = subprocess.run(
            [str(env_dir / "bin" / script), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        assert help_.returncode == 0 and help_.stdout.strip(), (script, help_.stderr)
