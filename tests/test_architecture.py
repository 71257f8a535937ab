"""The house rules, read from the code with `ast`: dependencies point one way (scp -> converter -> config),
there is no import cycle between modules, and the pure core does no I/O.

Every import counts, including those inside functions and under `if TYPE_CHECKING:`: a cycle hidden in a
function still means the two modules cannot be understood (or moved) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("scp", "converter", "config")
# A package may import the ones to its right, never those to its left.
ORDER = {"scp": 0, "converter": 1, "config": 2}
# The pure rules: no file system, network, codec or TIFF library (docs/architecture.md, "the pure core").
PURE = ("converter/inbox/completeness", "converter/tiff/layout")
IMPURE = {"os", "io", "shutil", "socket", "sqlite3", "pathlib", "tempfile", "subprocess", "pynetdicom", "pydicom",
          "pyvips", "tifffile", "imagecodecs", "openslide", "starlette", "uvicorn"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved against `name`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def project_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imported in imports_of(path, name):
            # the longest project module that the imported name starts with
            candidates = [m for m in mods if imported == m or imported.startswith(m + ".")]
            if candidates:
                target = max(candidates, key=len)
                if target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_dependencies_point_one_way():
    bad = []
    for name, targets in project_graph().items():
        for target in targets:
            src, dst = name.split(".")[0], target.split(".")[0]
            if ORDER[dst] < ORDER[src]:
                bad.append(f"{name} imports {target}")
    assert not bad, "scp -> converter -> config only:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    found = cycles(project_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", PURE)
def test_pure_core_does_no_io(module):
    path = REPO / f"{module}.py"
    if not path.exists():  # a split module: every file of the package is pure
        paths = sorted((REPO / module).glob("*.py"))
    else:
        paths = [path]
    assert paths, f"{module} not found: update PURE in this test when the pure core moves"
    for p in paths:
        imported = {n.split(".")[0] for n in imports_of(p, module_name(p))}
        assert not imported & IMPURE, f"{p.relative_to(REPO)} imports {sorted(imported & IMPURE)}"
        assert "open(" not in p.read_text(encoding="utf-8"), f"{p.relative_to(REPO)} opens files"


def test_the_checker_sees_a_violation(tmp_path):
    """The rule above cannot pass vacuously: a made-up config module importing scp is caught, and so is a cycle."""
    fake = tmp_path / "fake.py"
    fake.write_text("from scp.cli import main\nimport converter.durable\n")
    assert {"scp.cli", "scp.cli.main", "converter.durable"} <= imports_of(fake, "config.fake")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert len(project_graph()) > 40


def test_docs_architecture_matches_the_tree():
    """docs/architecture.md is the newcomer's map: every module is on it, and everything on it exists."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = doc[doc.index("```") + 3: doc.index("```", doc.index("```") + 3)]
    named: set[str] = set()
    folder: list[str] = []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        entry = line.split()[0]
        folder[depth:] = []
        if entry.endswith("/"):
            folder.append(entry.rstrip("/"))
            named.add("/".join(folder))
        elif entry.endswith(".py"):
            named.add("/".join(folder + [entry]))
    # Folders drawn as one room: their modules need no line each.
    rooms = ("converter/testkit", "converter/inbox/completeness")
    missing = []
    for name, path in modules().items():
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" or rel.startswith(rooms):
            continue
        if rel not in named:
            missing.append(rel)
    assert not missing, f"modules not on docs/architecture.md: {missing}"
    stale = [n for n in named if n.split("/")[0] in PACKAGES and not (REPO / n).exists()]
    assert not stale, f"docs/architecture.md names what does not exist: {stale}"
