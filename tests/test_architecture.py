"""The house plan, read from the imports: no import circle, no floor importing a higher one.

Every ``import`` and ``from ... import`` in fourm/ counts, also those inside functions (they import
just the same, only later). The floors, from the ground up (docs/architecture.md draws them):

    core        fourm (package), atomic, errors, locking, config, hub, modalities
    vq          tokenizer models, quantizers, text and boxes
    data        ShapesWorld, shards, photos, image sources, data set tokenisation
    masking     token budgets and span masking
    models      FourM
    compat      the 4M reference's checkpoints and masks
    generation  the sampler, guidance, chains, decoding
    evaluation  scores, the benchmark
    training    the single trainer and its tasks
    cli         fourm.cli, fourm.__main__, every ``commands`` module and the demo: entry points, may import anything

A module may import its own package and any lower floor.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS: tuple[tuple[str, ...], ...] = (
    ("core",), ("vq",), ("data",), ("masking",), ("models",), ("compat",), ("generation",), ("evaluation",),
    ("training",), ("cli",),
)
RANK = {name: i for i, names in enumerate(FLOORS) for name in names}
CORE = {"fourm", "fourm.atomic", "fourm.errors", "fourm.locking", "fourm.config", "fourm.hub", "fourm.modalities"}
CLI = {"fourm.cli", "fourm.__main__", "fourm.evaluation.demo"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "fourm").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the fourm modules it imports. ``from a import b`` counts ``a.b`` when that is a
    module, else ``a``; a package's ``__init__`` that every submodule import runs first is not
    counted (it is no choice of the importing module)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "fourm"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fourm":
                subs = {f"{node.module}.{a.name}" for a in node.names}
                edges |= {m for m in subs if m in mods}
                if any(m not in mods for m in subs):  # a name defined in the module itself
                    edges.add(node.module)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def floor(module: str) -> str:
    if module in CORE:
        return "core"
    if module in CLI or module.endswith(".commands"):
        return "cli"
    return module.split(".")[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_floor():
    assert {floor(m) for m in modules()} <= set(RANK)


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_floor_imports_a_higher_one():
    bad = sorted(f"{a} ({floor(a)}) imports {b} ({floor(b)})" for a, deps in import_graph().items()
                 for b in deps if RANK[floor(b)] > RANK[floor(a)])
    assert bad == []


def test_the_checks_find_a_circle_and_a_climb():
    """The checks above can fail: a circle and an import from a lower floor are both seen."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor("fourm.vq.vqvae") == "vq" and floor("fourm.training.commands") == "cli"
    assert RANK[floor("fourm.training.trainer")] > RANK[floor("fourm.vq.vqvae")]


def test_the_library_never_imports_experiments_or_benchmarks():
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("experiments", "benchmarks") for n in names), name


def test_docstrings_cite_only_files_of_the_repository():
    """A repository path in the library's text (``fourm/...``, ``configs/...``, ``docs/...`` ...)
    names a file or folder that exists; paths of the 4M reference are written ``ml-4m/...``."""
    cited = re.compile(r"(?<![\w/.-])((?:fourm|configs|tests|benchmarks|experiments|docs|models|tokenizers|notebooks)"
                       r"/[\w./-]*\w)(?![\w*{])")
    missing = sorted({f"{path.relative_to(REPO)}: {m.group(1)}" for path in modules().values()
                      for m in cited.finditer(path.read_text()) if not (REPO / m.group(1)).exists()})
    assert missing == []
    assert cited.findall("see configs/fm/shapes_tiny.yaml and ml-4m/fourm/models/fm.py") == ["configs/fm/shapes_tiny.yaml"]
