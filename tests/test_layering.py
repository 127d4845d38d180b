"""The package's layers (docs/concepts/layout.md): no import cycle, function-local imports included,
each module imports only from its own layer or the ones below, and the views import nothing but
``_internal`` and themselves. Built from the source with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "sink_interp"
ROOT = Path(__file__).resolve().parent.parent / PKG

#: bottom to top; a module belongs to the layer of its longest listed prefix (the same table is in docs/concepts/layout.md)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("engine", ("_internal", "capture")),
    ("model", ("architecture", "masks", "kernels", "models", "provenance", "data", "tasks")),
    (
        "analyses",
        (
            "metrics",
            "blockwise",
            "lse",
            "fused",
            "massive",
            "trace",
            "pipeline",
            "interventions",  # a package: base, edits, keys (the catalogue), runtime (intervene, masked, nesting)
            "effects",
            "attribution",
            "patching",  # a package: sites, report, run, heads
            "circuits",
            "fit",
            "battery",
            "streaming",
            "longctx",
            "quant",
            "kvcache",
            "outliers",
            "training",
        ),
    ),
    ("views", ("views",)),
    ("orchestration", ("pages", "cli", "")),  # cli: the package of one module per command; "": the package's __init__
]

#: what the views may import: nothing but their own modules and _internal
VIEWS_MAY_IMPORT = ("views", "_internal")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", "")) == "TYPE_CHECKING"


def imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (in functions too; not under TYPE_CHECKING)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target not in mods and "." in target:
            target = target.rsplit(".", 1)[0]
        return target if target in mods else None

    def walk(node: ast.AST) -> None:
        for ch in ast.iter_child_nodes(node):
            if _type_checking(ch):
                continue
            targets: list[str] = []
            if isinstance(ch, ast.Import):
                targets = [a.name for a in ch.names]
            elif isinstance(ch, ast.ImportFrom):
                if ch.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (ch.level - 1)]
                    mod = ".".join(base + ([ch.module] if ch.module else []))
                else:
                    mod = ch.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in ch.names]
            for t in targets:
                if t == PKG or t.startswith(PKG + "."):
                    r = resolve(t)
                    if r is not None and r != name:
                        found.add(r)
            walk(ch)

    walk(ast.parse(path.read_text(encoding="utf-8")))
    return found


def layer_of(name: str) -> int:
    """Index in :data:`LAYERS` of a module (``sink_interp.x.y``), by its longest listed prefix."""
    rel = name[len(PKG) + 1 :] if name != PKG else ""
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (rel == p or rel.startswith(p + ".") or p == "" and rel == "") and len(p) > depth:
                best, depth = i, len(p)
    if best is None:
        raise KeyError(name)
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, mods) for m, p in mods.items()}


def test_every_module_has_a_layer(graph):
    missing = []
    for m in graph:
        try:
            layer_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"modules in no layer: {missing}; add them to LAYERS here and to docs/concepts/layout.md"


def test_no_import_cycle(graph):
    """Tarjan's strongly connected components; any component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles (function-local imports included): {cycles}"


def test_views_import_only_internal(graph):
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if m == f"{PKG}.views" or m.startswith(f"{PKG}.views.")
        for t in ts
        if not any(t == f"{PKG}.{p}" or t.startswith(f"{PKG}.{p}.") for p in VIEWS_MAY_IMPORT)
    )
    assert not bad, f"the view layer imports from outside views and _internal: {bad}"


def test_layers_import_only_downwards(graph):
    names = [n for n, _ in LAYERS]
    up = sorted(
        f"{m} ({names[layer_of(m)]}) -> {t} ({names[layer_of(t)]})"
        for m, ts in graph.items()
        for t in ts
        if layer_of(t) > layer_of(m)
    )
    assert not up, f"imports from a higher layer: {up}"


def test_the_graph_sees_function_local_imports():
    """The checker itself: an import inside a function counts, one under TYPE_CHECKING does not."""
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\ndef f():\n    from .c import x\n"
    mods = {f"{PKG}.{m}": ROOT / f"{m}.py" for m in "abc"}
    assert imports(f"{PKG}.a", _Source(src), mods) == {f"{PKG}.c"}


class _Source:
    """A stand-in for a module file (``name`` and ``read_text``) holding ``text``."""

    name = "a.py"

    def __init__(self, text: str):
        self.text = text

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.text


def test_no_private_name_is_imported_from_another_module():
    """A helper another module needs is public (no leading underscore): the import says what is shared."""
    import ast

    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sink_interp")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{name}:{node.lineno} imports {private} from {node.module}")
    assert not found, found
