"""The dependency graph points down: read every module's imports with `ast` (nothing is imported) and check
  - reward_zoo imports nothing from mogen (it is a scorer library; mogen registers its own scorer),
  - mogen/models imports only the contract's own level (no trainer module: the rollout, the update, ...),
  - no two mogen modules import each other, directly or through others, when they are imported
    (imports inside functions run later and are left out; so are `if TYPE_CHECKING:` blocks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What an adapter in mogen/models may import from mogen: the models package itself and the low-level modules
# below the trainer (sampling math, recipe types, LoRA helpers). Everything else is the trainer's.
MODELS_MAY_IMPORT = ("mogen.models", "mogen.sampling", "mogen.trajectory", "mogen.losses", "mogen.config", "mogen.lora")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path, module_level_only: bool) -> set[str]:
    """Absolute names of the modules `path` imports (`from a.b import c` gives a.b and a.b.c: c may be a module)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()

    def visit(nodes: list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            elif module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            else:
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, (ast.stmt, ast.excepthandler))])

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    return names


def test_reward_zoo_imports_nothing_from_mogen():
    offenders = {
        name: sorted(n for n in imported(path, module_level_only=False) if n == "mogen" or n.startswith("mogen."))
        for name, path in modules("reward_zoo").items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, "reward_zoo must not import mogen (mogen registers its own scorers)"


def test_models_import_no_trainer_module():
    offenders = {}
    for name, path in modules("mogen/models").items():
        from_mogen = [n for n in imported(path, module_level_only=False) if n == "mogen" or n.startswith("mogen.")]
        bad = [n for n in from_mogen if not any(n == ok or n.startswith(ok + ".") for ok in MODELS_MAY_IMPORT)]
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"mogen/models may import only {MODELS_MAY_IMPORT} from mogen (see mogen/models/README.md)"


def import_graph() -> dict[str, set[str]]:
    """mogen module -> the mogen modules importing it runs at once (each named module and its parent packages)."""
    known = modules("mogen")
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported_name in imported(path, module_level_only=True):
            parts = imported_name.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
        # a module's own parent packages are initialised before it, whoever imports it: not an edge of a cycle
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def test_mogen_modules_have_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_skips_function_bodies_and_type_checking(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom . import sibling\nimport os.path\n"
        "if TYPE_CHECKING:\n    import hidden\n"
        "def later():\n    import deferred\n"
        "try:\n    import optional\nexcept ImportError:\n    import fallback\n"
    )
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    expected = {"typing", "typing.TYPE_CHECKING", "pkg", "pkg.sibling", "os.path", "optional", "fallback"}
    assert imported(source, module_level_only=True) == expected
    assert "deferred" in imported(source, module_level_only=False)


def test_the_eval_command_line_does_not_import_the_main_one():
    """mogen.cli mounts mogen.evaluation.cli's commands: an import back, even one deferred into a function, is a cycle."""
    assert "mogen.cli" not in imported(ROOT / "mogen" / "evaluation" / "cli.py", module_level_only=False)
