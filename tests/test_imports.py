"""The house's import graph, read from the package's source (every import, also those inside functions):
no cycle, and every arrow points down the layers."""

import ast
from pathlib import Path

import rrdist

PACKAGE = Path(rrdist.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """rrdist module -> the rrdist modules it imports (a package import counts as its __init__)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets.update(found or [node.module])
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def arrows(graph, source_prefix):
    return {(a, b) for a, b_set in graph.items() for b in b_set if a == source_prefix or a.startswith(source_prefix + ".")}


def inside(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_is_read():  # the reader finds arrows it must find, so the checks below can fail
    graph = import_graph()
    assert "rrdist.config" in graph["rrdist.methods.base"]
    assert "rrdist.methods" in graph["rrdist.train.setup"] or "rrdist.methods" in graph["rrdist.train.loop"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_evaluation_reads_a_saved_backbone_without_knowing_training_or_methods():
    bad = {(a, b) for a, b in arrows(import_graph(), "rrdist.eval") if inside(b, "rrdist.train", "rrdist.methods")}
    assert not bad


def test_data_and_models_import_nothing_above_them():
    allowed = ("rrdist.data", "rrdist.models", "rrdist.errors", "rrdist.atomic", "rrdist.storage", "rrdist.progress")
    graph = import_graph()
    for layer in ("rrdist.data", "rrdist.models"):
        upward = {(a, b) for a, b in arrows(graph, layer) if not inside(b, *allowed)}
        assert not upward, upward
    assert not {(a, b) for a, b in arrows(graph, "rrdist.models") if inside(b, "rrdist.data")}


def test_configuration_knows_no_method():
    graph = import_graph()
    assert not {b for b in graph["rrdist.config"] if inside(b, "rrdist.methods", "rrdist.train", "rrdist.tune")}


def test_no_method_name_outside_its_own_file_and_the_registry():
    """A method's name appears in code only in its own file and the registry line."""
    from rrdist.methods import METHODS

    own = {name: PACKAGE / "methods" / f"{cls.__module__.rsplit('.', 1)[1]}.py" for name, cls in METHODS.items()}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "methods" / "__init__.py":
            continue
        strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        for name in METHODS:
            # "random" is also a word of its own: initial weights (--init random), t-SNE's initialisation.
            if path != own[name] and name != "random":
                assert name not in strings, f"'{name}' written in {path.relative_to(PACKAGE.parent)}"


def long_functions(limit: int = 60) -> list[str]:
    """Functions (and methods) of the package longer than `limit` lines, with their decorators."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > limit:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    return found


def test_no_function_is_longer_than_60_lines():
    assert long_functions(limit=5)  # the reader finds functions, so the check below can fail
    assert long_functions() == []
