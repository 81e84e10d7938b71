"""The package's import graph: every module imports on its own, no mixitcli module reaches
itself through its imports (top-level or inside functions), and the layers of
docs/architecture.md hold, so data flows one way."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mixitcli

ROOT = Path(mixitcli.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The mixitcli modules that ``name`` imports anywhere in its file.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    Parent packages that Python runs on the way (``a`` for ``a.b``) do not count: they are
    where a package lists its parts, not a dependency of those parts. Nor does reading
    metadata such as ``from mixitcli import __version__``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if alias.name.startswith("__"):
                    continue
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_constructed_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_of_mixitcli_has_no_cycle():
    modules = module_names()
    assert {"mixitcli.cli", "mixitcli.metrics", "mixitcli.stems", "mixitcli.progress", "mixitcli.demo.data"} <= set(
        modules
    )
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert (
        "mixitcli.metrics" in graph["mixitcli.train.loop"] and "mixitcli.evaluate" not in graph["mixitcli.train.loop"]
    )
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    # loading is one straight path: the model package (loading, checkpoint reading, averaging)
    # never reaches up into training or the registry; names are resolved before loading
    upward = {
        (m, d)
        for m, deps in graph.items()
        if m.startswith("mixitcli.model")
        for d in deps
        if d.startswith(("mixitcli.train", "mixitcli.registry"))
    }
    assert not upward, upward
    assert "mixitcli.model.checkpoints" in graph["mixitcli.train.checkpoint"]


@pytest.mark.parametrize(
    "name", sorted(n for n in module_names() if not n.endswith("__main__"))
)  # __main__ runs the CLI
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


# The layers of docs/architecture.md, lowest first: a module may import its own layer and the
# layers below it, never one above. "mixitcli.data" covers mixitcli.data.* (and so on).
LAYERS = [
    (
        "foundations",
        [
            "mixitcli.stems",
            "mixitcli.signals",
            "mixitcli.storage",
            "mixitcli.progress",
            "mixitcli.devices",
            "mixitcli.allocator",
            "mixitcli.losses",
            "mixitcli.lock",
            "mixitcli.audio",
            "mixitcli.onnxrun",
        ],
    ),
    ("model", ["mixitcli.model"]),
    (
        "data and metrics",
        [
            "mixitcli.data",
            "mixitcli.metrics",
            "mixitcli.report",
            "mixitcli.separate",
            "mixitcli.inference",
            "mixitcli.demo",
        ],
    ),
    (
        "stages",
        [
            "mixitcli.registry",
            "mixitcli.selection",
            "mixitcli.train",
            "mixitcli.evaluate",
            "mixitcli.batch",
            "mixitcli.listen",
            "mixitcli.listen_page",
            "mixitcli.export",
        ],
    ),
    ("command line", ["mixitcli.cli", "mixitcli.__main__", "mixitcli"]),
]


def layer_of(name: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{name} is in no layer of LAYERS: add it (and to docs/architecture.md)"
    return best[0]


def test_layers_point_down():
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    upward = sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph.items()
        for d in deps
        if layer_of(d) > layer_of(m)
    )
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)
    # within the stages, training and the command line are leaves: only the CLI starts a stage
    assert {m for m, deps in graph.items() if "mixitcli.cli" in deps} == {"mixitcli.__main__"}
    train_users = {
        m
        for m, deps in graph.items()
        for d in deps
        if d.startswith("mixitcli.train") and not m.startswith("mixitcli.train")
    }
    assert train_users <= {"mixitcli.cli"}, train_users
    # the data stage knows nothing of models: it prepares and reads files
    data_to_model = {
        (m, d)
        for m, deps in graph.items()
        if m.startswith("mixitcli.data")
        for d in deps
        if d.startswith("mixitcli.model")
    }
    assert not data_to_model, data_to_model


def test_layer_rule_catches_an_upward_import():
    assert layer_of("mixitcli.model.bslocoformer") < layer_of("mixitcli.train.loop") < layer_of("mixitcli.cli")
    assert layer_of("mixitcli.data.fma") > layer_of("mixitcli.audio")
