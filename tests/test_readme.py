"""The README's commands run as written: every ``python -m vvm ...`` / ``vvm ...`` job line of its ``bash`` blocks
composes into typed settings in-process (the key check the CLI makes first, Hydra's compose, the schema and the
rules: no work done), and every ``vvm.diff`` / ``vvm.joint`` / ``vvm.sweep`` line (or its console script) parses
its arguments. A README command that stops composing fails here."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOOLS = {"vvm.diff": "vvm.diff", "vvm.joint": "vvm.joint", "vvm.sweep": "vvm.sweep"}
SCRIPTS = {"vvm-diff": "vvm.diff", "vvm-joint": "vvm.joint", "vvm-sweep": "vvm.sweep"}


def bash_commands(text: str) -> list[list[str]]:
    """The commands of the ``bash`` blocks: continuation lines joined, comments dropped, ``&&`` chains split,
    leading ``VAR=value`` assignments removed; each as its words."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in [*words, "&&"]:
                if w != "&&":
                    cmd.append(w)
                    continue
                while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", cmd[0]):
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
    return out


def classify(cmd: list[str]) -> tuple[str, list[str]] | None:
    """``("vvm", overrides)`` for a job line, ``(module, args)`` for another tool's, None for anything else."""
    if cmd[:3] == ["python", "-m", "vvm"] or cmd[:1] == ["vvm"]:
        return "vvm", cmd[3:] if cmd[0] == "python" else cmd[1:]
    if cmd[:2] == ["python", "-m"] and cmd[2] in TOOLS:
        return TOOLS[cmd[2]], cmd[3:]
    if cmd[0] in SCRIPTS:
        return SCRIPTS[cmd[0]], cmd[1:]
    return None


COMMANDS = [c for c in (classify(cmd) for cmd in bash_commands(README.read_text())) if c is not None]
JOBS = [args for tool, args in COMMANDS if tool == "vvm"]
TOOL_LINES = [(tool, args) for tool, args in COMMANDS if tool != "vvm"]


def one_job(overrides: list[str]) -> list[str]:
    """A multirun line's first job: ``-m`` dropped, each sweep (``a,b,c`` outside brackets) its first value."""
    out = []
    for o in overrides:
        if o in ("-m", "--multirun"):
            continue
        key, eq, value = o.partition("=")
        if eq and "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        out.append(f"{key}{eq}{value}")
    return out


def test_the_readme_has_the_commands():
    assert len(JOBS) >= 30 and {t for t, _ in TOOL_LINES} == {"vvm.diff", "vvm.joint", "vvm.sweep"}
    assert any(args[:1] == ["-m"] for args in JOBS)  # multirun lines are among them
    blocks = "".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S))
    unquoted = re.findall(r"(?<=\s)[\w.+]+=\[[^\]]*\]", blocks)  # zsh reads [...] as a pattern: quote it
    assert not unquoted, unquoted


# the config-group choices that decide most of what Hydra composes (the model's generated node, the init's
# rules, a second model, the sweep and the launcher); the fast test composes one line of each combination
GROUPS = {"model", "init", "compare", "+sweep", "hydra/launcher"}


def choices(overrides: list[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if o.partition("=")[0] in GROUPS))


def compose_errors(lines: list[list[str]], out_dir: Path) -> list[str]:
    """Each line composed as ``python -m vvm`` would before running it: the key check the CLI makes first, then
    Hydra's compose into typed settings (schema types, ranges and rules)."""
    from vvm.schema import CONFIG_DIR, compose, override_errors

    failures = []
    for args in lines:
        overrides = one_job(args)
        errors = override_errors(overrides, CONFIG_DIR)
        try:
            if not errors:
                compose(overrides, output_dir=out_dir)
        except Exception as e:  # noqa: BLE001 - collect every failing line
            errors = [f"{type(e).__name__}: {e}"]
        if errors:
            failures.append(f"python -m vvm {shlex.join(args)}: {'; '.join(errors)}")
    return failures


def test_readme_jobs_compose(tmp_path):
    """Every job line's keys are the schema's (the check ``python -m vvm`` makes first), and one line of each
    combination of :data:`GROUPS` choices composes into typed settings (12 of 30 lines: Hydra's compose takes
    ~0.2 s a line; the slow test below composes every line)."""
    from vvm.schema import CONFIG_DIR, override_errors

    bad_keys = [f"{shlex.join(a)}: {e}" for a in JOBS for e in override_errors(one_job(a), CONFIG_DIR)]
    assert not bad_keys, "\n".join(bad_keys)
    firsts = {choices(one_job(a)): a for a in reversed(JOBS)}  # the first line of each combination
    failures = compose_errors(list(firsts.values()), tmp_path)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_every_readme_job_composes(tmp_path):
    failures = compose_errors(JOBS, tmp_path)
    assert not failures, "\n".join(failures)


class Parsed(Exception):
    pass


@pytest.mark.parametrize("tool,args", TOOL_LINES, ids=[f"{t} {' '.join(a)}" for t, a in TOOL_LINES])
def test_every_readme_tool_line_parses(tool, args, monkeypatch):
    """The argument parser of ``python -m vvm.diff|joint|sweep`` accepts the line (nothing runs: parsing stops
    the tool; argparse's SystemExit is a line that does not parse)."""
    import importlib

    def stop(self, *a, **k):
        raise Parsed(original(self, *a, **k))

    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(Parsed):
        importlib.import_module(tool).main(args)


def test_console_scripts_beside_python_m():
    """``vvm``, ``vvm-diff``, ``vvm-joint``, ``vvm-sweep`` in pyproject, each the ``main`` of its module."""
    import importlib

    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "vvm": "vvm.__main__:main",
        "vvm-diff": "vvm.diff:main",
        "vvm-joint": "vvm.joint:main",
        "vvm-sweep": "vvm.sweep:main",
    }
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
