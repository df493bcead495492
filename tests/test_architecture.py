"""The shape of the package, read from its source with ``ast``: no import cycle between modules (lazy imports
inside functions count), imports point down the layers of docs/architecture.md, nothing below the job-assembly
layer imports omegaconf or hydra, no file above 500 lines and no function above 60.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60

# imports point down this list (a module may import from its own layer or any layer below, never above)
LAYERS = (
    ("vvm.cka", "vvm.io", "vvm.settings"),  # the engine, helpers with no vvm imports, the typed settings
    ("vvm.models", "vvm.data"),  # networks and datamodules
    (
        "vvm.train",
        "vvm.callbacks",
        "vvm.plots",
        "vvm.analyses",
        "vvm.loggers",
        "vvm.diff",
    ),  # above the engine
    # one job from settings: the job's settings (above the analyses, whose parameters they gather) and the rules
    # that tie them together (they ask the weights' source), weights, preflight, the steps, the report
    ("vvm.pipeline", "vvm.settings.job", "vvm.settings.rules"),
    (
        "vvm.schema",
        "vvm.job",
        "vvm.sweep",
        "vvm.joint",
        "vvm.identification",
    ),  # job assembly: the config is read
    ("vvm.__main__", "vvm"),
)
# the first layer allowed to import omegaconf or hydra (the config is turned into settings there, once)
JOB_ASSEMBLY = 4
CONFIG_LIBRARIES = ("omegaconf", "hydra", "antlr4")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / "vvm").rglob("*.py"))}


def third_party_imports(path: Path) -> set[str]:
    """The top-level packages outside vvm a file imports anywhere in it (``TYPE_CHECKING`` blocks too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out - {"vvm"}


def imports_of(module: str) -> set[str]:
    """The vvm modules ``module`` imports anywhere in its file (top level or inside functions)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from vvm.models import create` names a module when create is one, else the package
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import vvm.models.base as b` -> vvm.models.base
                name = name.rpartition(".")[0]
            # importing vvm.models.base runs vvm.models/__init__ first: an edge too, from outside the package
            parents = [name.rsplit(".", k)[0] for k in range(1, name.count("."))]
            for target in [name, *parents]:
                if target and target != module and not module.startswith(target + "."):
                    out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read():
    assert (
        "vvm.models.base" in GRAPH["vvm.pipeline.weights"]
        and "vvm.pipeline.weights" in GRAPH["vvm.pipeline.steps"]
    )
    assert "vvm.pipeline.steps" in GRAPH["vvm.job.task"]  # a lazy import inside a function counts


def test_no_import_cycle():
    found = cycles()
    assert not found, f"import cycles: {found}"


def layer(module: str) -> int:
    best = None
    for i, members in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and (best is None or len(m) > best[1]):
                best = (i, len(m))
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[0]


def test_imports_point_down():
    upward = [f"{m} -> {t}" for m in sorted(GRAPH) for t in sorted(GRAPH[m]) if layer(t) > layer(m)]
    assert not upward, upward


def config_imports(modules: dict[str, Path]) -> list[str]:
    """``module -> library`` for every module below the job-assembly layer that imports a config library."""
    return [
        f"{m} -> {lib}"
        for m, path in sorted(modules.items())
        if layer(m) < JOB_ASSEMBLY
        for lib in sorted(third_party_imports(path) & set(CONFIG_LIBRARIES))
    ]


def test_nothing_below_the_job_layer_reads_the_config():
    """weights, train/, callbacks/, models/, data/, plots/, loggers, io, diff, cka/, settings/ and the pipeline
    receive objects: none imports omegaconf or hydra."""
    found = config_imports(MODULES)
    assert not found, found


def test_the_config_rule_catches_an_import(tmp_path):
    """The rule above fails for a module of a lower layer that imports omegaconf (checked on a copy)."""
    bad = tmp_path / "weights.py"
    bad.write_text(
        MODULES["vvm.pipeline.weights"].read_text() + "\nfrom omegaconf import DictConfig  # noqa\n"
    )
    assert config_imports({"vvm.pipeline.weights": bad}) == ["vvm.pipeline.weights -> omegaconf"]
    assert config_imports({"vvm.job.task": MODULES["vvm.job.task"]}) == []  # the job layer may


def test_the_engine_imports_nothing_from_outside_it():
    outside = [f"{m} -> {t}" for m in GRAPH if m.startswith("vvm.cka") for t in GRAPH[m] if t != "vvm"]
    outside = [e for e in outside if not e.split(" -> ")[1].startswith("vvm.cka")]
    assert not outside, outside


def sizes() -> list[tuple[str, str, int, int]]:
    """``(module, what, lines, limit)`` for every file and every function of src/vvm."""
    out = []
    for module, path in MODULES.items():
        text = path.read_text()
        out.append((module, str(path.relative_to(SRC)), len(text.splitlines()), MAX_FILE_LINES))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                what = f"{path.relative_to(SRC)}::{node.name} (line {node.lineno})"
                out.append((module, what, node.end_lineno - node.lineno + 1, MAX_FUNCTION_LINES))
    return out


def test_files_and_functions_are_short():
    long = [f"{what}: {n} lines > {limit}" for m, what, n, limit in sizes() if n > limit]
    assert not long, "\n".join(long)


# ---------------------------------------------------------------------------------------------- a job of objects
MAX_WHOLE_JOB_FUNCTIONS = 4


def whole_job_functions(sources: dict[str, str]) -> list[str]:
    """``module.function`` for every function of ``sources`` (module -> text) with a parameter annotated
    ``JobSettings``: a function that takes the whole job rather than the settings it uses."""
    out = []
    for module, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                if any(a.annotation is not None and "JobSettings" in ast.unparse(a.annotation) for a in args):
                    out.append(f"{module}.{node.name}")
    return sorted(out)


def test_few_functions_take_the_whole_job():
    """The job's settings are taken whole where a job starts (``run``, ``build``) and by the rules that check
    them (``rule_errors``, ``check_rules``);
    everything else takes the objects ``build`` made and the few settings it names."""
    found = whole_job_functions({m: p.read_text() for m, p in MODULES.items()})
    assert "vvm.pipeline.steps.run" in found and "vvm.pipeline.objects.build" in found  # the count reads them
    bad = "def f(x: int, *, job: JobSettings | None = None) -> None: ...\ndef g(job) -> None: ..."
    assert whole_job_functions({"m": bad}) == ["m.f"]
    assert len(found) <= MAX_WHOLE_JOB_FUNCTIONS, found


def summary_writes(text: str, name: str = "summary") -> list[int]:
    """The lines that write into the dict ``name``: ``name[...] = ...`` (``+=`` too), ``name.update(...)``,
    ``name.setdefault(...)``, ``name |= ...``."""
    out = []
    for node in ast.walk(ast.parse(text)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == name:
                out.append(node.lineno)
            elif isinstance(node, ast.AugAssign) and isinstance(t, ast.Name) and t.id == name:
                out.append(node.lineno)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("update", "setdefault", "__setitem__")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
        ):
            out.append(node.lineno)
    return sorted(out)


def test_result_json_is_assembled_once():
    """The steps return their facts; :func:`vvm.pipeline.steps.merge_facts` writes them into result.json's dict,
    the one write into it in the pipeline."""
    bad = "summary['a'] = 1\nsummary.update(b=2)\nsummary |= {}\nsummary['c'] += 1\nother['d'] = 1\n"
    assert summary_writes(bad) == [1, 2, 3, 4]
    writes = {m: summary_writes(p.read_text()) for m, p in MODULES.items() if m.startswith("vvm.pipeline")}
    assert len(writes["vvm.pipeline.steps"]) == 1, writes["vvm.pipeline.steps"]
    assert not any(lines for m, lines in writes.items() if m != "vvm.pipeline.steps"), writes
