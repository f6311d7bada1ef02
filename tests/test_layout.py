"""The package's layers, kept: imports point down only, and no module imports itself in a circle.

    stages (featurize, train, evaluate, crossval, score, demo, cli)
      -> audio | ml   (two peers that never import each other)
      -> formats      (every on-disk contract)
      -> config       (settings, recipe, vocabularies)
      -> io           (storage, lock, catalogue, Spark session)
      -> errors
"""

import ast
import os

import pytest

pytestmark = pytest.mark.pure

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "genreclf")
LAYERS = {"errors": 0, "io": 1, "config": 2, "formats": 3, "audio": 4, "ml": 4}
STAGE = 5


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
    parts = module.split(".")
    return LAYERS.get(parts[1], STAGE) if len(parts) > 1 else STAGE


def test_imports_point_down_only():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for target in _imports(path, modules):
            if target == "genreclf" or target.split(".")[:2] == module.split(".")[:2]:
                continue  # the package itself (its version), or a module of the same subpackage
            if _layer(target) > _layer(module) or (_layer(target) == _layer(module) != STAGE):
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
    top = sorted(n for n in os.listdir(ROOT) if n.endswith(".py") or os.path.isfile(os.path.join(ROOT, n, "__init__.py")))
    assert len(top) <= 14, top  # ~12 modules and the four layer packages


def test_no_module_is_long_without_saying_why():
    """Over 400 lines only with a reason in the module docstring ("long because ...")."""
    long = []
    for module, path in _modules().items():
        text = open(path).read()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > 400 and "long because" not in doc.lower():
            long.append(f"{module}: {text.count(chr(10))} lines")
    assert not long, long
