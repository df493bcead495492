"""What importing vvm costs (issue 30, item 5): the engine's package imports its modules on first use, and the
settings and the schema (all that ``python -m vvm --help`` needs) import neither torchmetrics nor Lightning nor
matplotlib. Measured by the modules a fresh process holds, not by time (timings are noise on a loaded machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import vvm

HEAVY = (
    "torchmetrics",
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "matplotlib",
    "torchvision",
    "timm",
)


def loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """The ``modules`` that a fresh interpreter holds after running ``code`` (with the vvm these tests run)."""
    env = {**os.environ, "PYTHONPATH": str(Path(vvm.__file__).parents[1])}
    probe = f"{code}\nimport sys\nprint([m for m in {modules!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return eval(done.stdout.strip().splitlines()[-1])


def test_import_vvm_cka_imports_its_modules_on_first_use():
    assert loaded_after("import vvm.cka, vvm.cka.params", ("torch", *HEAVY)) == []
    import vvm.cka

    assert set(vvm.cka.__all__) <= set(dir(vvm.cka))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        vvm.cka.nothing  # noqa: B018


@pytest.mark.slow  # a fresh process imports torch (2 s on a quiet machine, 6 s under load)
def test_settings_and_schema_import_no_torchmetrics_lightning_or_matplotlib():
    assert loaded_after("import vvm.settings, vvm.schema", HEAVY) == []
