"""The shape of the code under jdo/, read from its source with ``ast`` (nothing is imported):
no import cycle between modules, no function of 120 lines or more, no private name imported
from another module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "jdo"
MAX_FUNCTION_LINES = 120  # STYLE: under ~60 where reasonable, never this long


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every import statement, at any depth (a function's deferred import still makes a
    dependency), except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join([*base, node.module] if node.module else base)


def _dependencies(module: str) -> set[str]:
    """The jdo modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub`` when
    ``sub`` is a module, else as ``pkg``)."""
    deps = set()
    for node in _imports(TREES[module]):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            source = _absolute(module, node)
            targets = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                for a in node.names
            ]
        deps |= {t for t in targets if t in MODULES and t != module}
    return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_is_read():
    deps = _dependencies("jdo.transforms.gossip")
    assert "jdo.comm.gossip" in deps or "jdo.comm" in deps, deps


def test_no_import_cycle_between_jdo_modules():
    graph = {m: _dependencies(m) for m in MODULES}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(
        " <-> ".join(c)
        + " ("
        + ", ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
        + ")"
        for c in cycles
    )


def test_no_function_is_120_lines_or_longer():
    long = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{node.lineno} {node.name} "
        f"({node.end_lineno - node.lineno + 1} lines)"
        for m, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 >= MAX_FUNCTION_LINES
    ]
    assert not long, f"functions of {MAX_FUNCTION_LINES} lines or more: {long}"


def _private_imports(module: str) -> list[str]:
    found = []
    for node in _imports(TREES[module]):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source.split(".")[0] == "jdo" and source != module:
                found += [
                    f"{module} imports {a.name} from {source}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_private_name_is_imported_from_another_module():
    found = [line for m in MODULES for line in _private_imports(m)]
    assert not found, found
