"""A save that fails partway (issue 19.9): torch's zip writer raises RuntimeError ("unexpected pos") when a write
fails midway (a full disk, a quota, a file-size limit); the trained weights are kept somewhere the message names,
or the error says plainly that none could be written."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from vvm.models.checkpoints import read_checkpoint
from vvm.pipeline import weights

MIDWAY = "[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A network, a config whose run directory is tmp_path/run, a temporary directory of its own, and a
    torch.save that fails midway in the folders listed in ``failing``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    failing: set[Path] = set()
    real = torch.save

    def save(obj, f, *a, **kw):
        if Path(f).parent in failing:
            Path(f).write_bytes(b"PK\x03\x04 half a zip")  # what a writer leaves behind before it fails
            raise RuntimeError(MIDWAY)
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    run_dir = tmp_path / "run"
    target = tmp_path / "ckpt" / "r18-digits-e4-s0-abc.ckpt"
    return torch.nn.Linear(3, 2), run_dir, target, failing


def _save(net, run_dir, target):
    return weights.save_or_keep(
        target, net, keep_dir=run_dir, dataset_name="digits", facts={"key": target.stem}
    )


def test_a_midway_failure_keeps_the_weights_in_the_run_directory(setup, caplog):
    net, run_dir, target, failing = setup
    failing.add(target.parent)
    kept = _save(net, run_dir, target)
    assert kept == run_dir / target.name and not target.exists()
    state, dataset = read_checkpoint(kept)
    assert dataset == "digits" and torch.equal(state["weight"], net.weight)
    assert "kept them in the run directory" in caplog.text and str(kept) in caplog.text
    assert "unexpected pos" in caplog.text  # what went wrong, with the place
    assert [p.name for p in target.parent.iterdir()] == []  # no half file left


def test_then_the_temporary_directory_and_then_a_plain_error(setup, caplog, tmp_path):
    net, run_dir, target, failing = setup
    failing.update({target.parent, run_dir})
    kept = _save(net, run_dir, target)
    assert kept == tmp_path / "tmp" / f"vvm-{target.name}" and kept.is_file()
    assert "kept them in the temporary directory" in caplog.text
    failing.add(tmp_path / "tmp")
    kept.unlink()
    with pytest.raises(OSError, match="could not be written anywhere, so they are lost") as e:
        _save(net, run_dir, target)
    for where in ("paths.checkpoints", "the run directory", "the temporary directory", "unexpected pos"):
        assert where in str(e.value)


_ULIMIT = r"""
import resource, sys, torch
from vvm.pipeline.weights import save_or_keep
from pathlib import Path
root = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # `ulimit -f`: files above 200 kB fail midway
import tempfile; tempfile.tempdir = str(root / "tmp")
try:
    save_or_keep(root / "ckpt" / "k.ckpt", torch.nn.Linear(300, 300), keep_dir=root / "run", dataset_name="digits",
                 facts={})
except OSError as e:
    print("ERROR", e)
"""


@pytest.mark.slow
def test_a_file_size_limit_is_a_plain_error(tmp_path):
    """With a real ``ulimit -f`` (SIGXFSZ is ignored by Python, so the write fails with EFBIG and torch raises
    RuntimeError midway): every place fails the same way, and the error says so plainly."""
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _ULIMIT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR the trained weights could not be written anywhere" in proc.stdout
    assert proc.stdout.count("RuntimeError") == 3 and "unexpected pos" in proc.stdout, proc.stdout
