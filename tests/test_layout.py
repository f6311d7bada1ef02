"""The package's layers, kept: imports point down only, and no module imports itself in a circle.

    workflows (crossval: train and evaluate per fold; demo)
      -> stages (featurize, train, evaluate, score: the four jobs; none imports another)
      -> shared by the stages (cli: the jobs' command lines; mlflow_model: a bundle as an MLflow model)
      -> audio | ml   (two peers that never import each other)
      -> formats      (every on-disk contract)
      -> io           (storage, lock, catalogue, Spark session, MLflow tracking)
      -> config       (the recipe, every settings section, their layering; reads no URL itself)
      -> errors

An entry point (a ``__main__`` module, like ``jobs/*.py``) is imported by nothing and sits above every layer.
"""

import ast
import os

import pytest

pytestmark = pytest.mark.pure

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "genreclf")
LAYERS = {"errors": 0, "config": 1, "io": 2, "formats": 3, "audio": 4, "ml": 4,
          "cli": 5, "mlflow_model": 5, "featurize": 6, "train": 6, "evaluate": 6, "score": 6, "crossval": 7, "demo": 7}


def _modules() -> dict:
    """{dotted name: path} of every module of the package."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return out


def _imports(path: str, modules: dict) -> set:
    """The package's modules that ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n.startswith("genreclf.")}
    return found


def _layer(module: str) -> int:
    """The layer of a module; one the table above does not name fails (put it in a layer)."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return max(LAYERS.values()) + 1
    assert len(parts) == 1 or parts[1] in LAYERS, f"{module} is in no layer: add it to LAYERS"
    return LAYERS[parts[1]] if len(parts) > 1 else max(LAYERS.values()) + 1


def test_imports_point_down_only():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for target in _imports(path, modules):
            if target == "genreclf" or target.split(".")[:2] == module.split(".")[:2]:
                continue  # the package itself (its version), or a module of the same subpackage
            if _layer(target) >= _layer(module):  # up, or across: a stage importing a stage, ml <-> audio
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m, "genreclf"} for m, p in modules.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_top_level_reads_like_a_table_of_contents():
    """Every module and package at the top is one the layer table names (and its count stays small)."""
    top = {n.removesuffix(".py") for n in os.listdir(ROOT)
           if n.endswith(".py") or os.path.isfile(os.path.join(ROOT, n, "__init__.py"))} - {"__init__"}
    assert top == set(LAYERS), sorted(top ^ set(LAYERS))


def test_no_module_is_over_400_lines():
    """No waiver: a module that grows past 400 lines is split by concern (as io.storage was)."""
    long = [f"{module}: {n} lines" for module, path in _modules().items() if (n := open(path).read().count("\n")) > 400]
    assert not long, long
