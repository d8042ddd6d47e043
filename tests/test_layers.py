"""The package's layers, checked over its imports: no upward import and no import circle.

    base       cas (the package), errors, logs, values, settings, refs, urls
    storage    cas/storage/   this machine's disk: layout, processes, blobs, catalog, queries,
                              verification
    transfer   cas/transfer/  bytes from elsewhere into staging; never the catalog
    ops        cas/ops/       one verb each, policy over storage and transfer
    façade     cas/store.py   wiring and the public methods
    faces      cli, harness, pytest_plugin, progress, render: adapters over the public API

A module may import its own layer and the layers below. Every import counts, at module level,
inside a function (a lazy import is still a dependency) or under TYPE_CHECKING, because each of
them is a way for knowledge to flow upwards. The test reads the source, so it sees modules that
no test happens to import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cas"

BASE = {"cas", "cas.errors", "cas.logs", "cas.settings", "cas.values", "cas.refs", "cas.urls"}
LAYERS = ["base", "storage", "transfer", "ops", "façade", "faces"]
#: Modules of a lower layer that a higher one must still not import.
FORBIDDEN = {
    "transfer": {  # transfer knows no catalog
        "cas.storage.catalog", "cas.storage.queries", "cas.storage.verification",
    },
    "faces": {"storage", "transfer"},  # faces go through the public API
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module in BASE:
        return "base"
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in ("storage", "transfer", "ops"):
        return parts[1]
    if parts[1:2] in (["storage"], ["transfer"], ["ops"]):
        return parts[1]  # the folder's own __init__
    if module == "cas.store":
        return "façade"
    return "faces"


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """Every cas module that ``module`` imports, with the line: absolute or relative,
    ``import a.b`` or ``from a import b`` (b a module or a name in a)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cas":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] != "cas":
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield (candidate if candidate in known else source), node.lineno


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        module: {imported for imported, _ in _imports(module, path, known) if imported != module}
        for module, path in modules.items()
    }


def test_every_module_has_a_layer_and_the_layers_are_the_documented_ones() -> None:
    modules = _modules()
    assert {_layer(module) for module in modules} == set(LAYERS)
    assert "cas.store" in modules and "cas.storage.catalog" in modules


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    modules = _modules()
    if module == "cas":
        return  # the package's lazy map names every public home; it imports none at load
    layer = _layer(module)
    bad = []
    for imported, line in _imports(module, modules[module], set(modules)):
        target = _layer(imported)
        forbidden = FORBIDDEN.get(layer, set())
        if imported == "cas" or imported.startswith("cas.__"):
            continue  # the package itself (its version) is light and below everything
        if LAYERS.index(target) > LAYERS.index(layer) or imported in forbidden or (
            target in forbidden
        ):
            bad.append(f"{modules[module].relative_to(PACKAGE.parent)}:{line} imports {imported}"
                       f" ({layer} -> {target})")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_circle() -> None:
    """No set of modules imports each other round in a circle (Tarjan's strongly connected
    components over every import, lazy ones included)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target == "cas":
                continue  # the package's lazy names are not module-level imports
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, circles


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a storage module importing an op is reported."""
    fake = tmp_path / "cas" / "storage" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from cas.ops import fetch\nfrom . import blobs\n", encoding="utf-8")
    known = {"cas.ops.fetch", "cas.storage.blobs"}
    found = {name for name, _ in _imports("cas.storage.fake", fake, known)}
    assert found == {"cas.ops.fetch", "cas.storage.blobs"}
    assert _layer("cas.ops.fetch") == "ops" and _layer("cas.storage.fake") == "storage"


def test_only_the_log_module_imports_logging_at_module_level() -> None:
    """``logging`` costs a few milliseconds of every start-up; cas/logs.py loads it on the first
    record, so every other module logs through ``cas.logs.log``."""
    offenders = []
    for module, path in _modules().items():
        if module == "cas.logs":
            continue
        for node in ast.parse(path.read_text()).body:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "logging" or name.startswith("logging.") for name in names):
                offenders.append(f"{module}:{node.lineno}")
    assert offenders == []
