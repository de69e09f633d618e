"""The layers of the core hold: import-linter's contract (pyproject.toml), no import circle (type-only
and in-function imports included), a pass never imports another pass, and the cheap commands import
only what they print."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "passes":
        parts = ["surgeon", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Every module of surgeon/ and passes/ (by its import name) -> the project modules it imports,
    wherever the import statement stands."""
    files = sorted((ROOT / "surgeon").rglob("*.py")) + sorted((ROOT / "passes").rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)
        graph[name] = deps
    return graph


def test_import_linter_contracts_are_kept() -> None:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and "KEPT" in proc.stdout


def test_no_import_circle() -> None:
    graph = _imports()
    assert "surgeon.ir.adapter" in graph and "surgeon.passes.cleanup" in graph
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_a_pass_never_imports_another_pass_and_the_core_never_imports_passes() -> None:
    graph = _imports()
    wrong = []
    for module, deps in graph.items():
        for dep in deps:
            if not dep.startswith("surgeon.passes."):
                continue
            helper = dep.rpartition(".")[2].startswith("_")
            if not module.startswith("surgeon.passes.") or not helper:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


HEAVY = {"pydantic", "onnx", "onnxruntime", "onnx_graphsurgeon", "numpy", "torch", "yaml"}


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["passes"]])
def test_cheap_commands_import_nothing_heavy(argv: list[str]) -> None:
    code = (
        "import contextlib, io\nfrom surgeon.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    rc = main({argv!r})\nassert rc == 0, rc"
    )
    loaded = _modules_after(code)
    assert loaded & HEAVY == set()
    assert not any(m.startswith("surgeon.passes.") for m in loaded)


def test_explain_imports_only_the_pass_it_explains() -> None:
    code = (
        "import contextlib, io\nfrom surgeon.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    rc = main(['explain', 'rename-io'])\nassert rc == 0, rc"
    )
    loaded = _modules_after(code)
    assert {m for m in loaded if m.startswith("surgeon.passes.")} == {"surgeon.passes.rename_io"}
    assert loaded & {"onnx", "onnxruntime", "onnx_graphsurgeon", "torch"} == set()


def test_apply_imports_only_the_passes_its_recipe_names(tmp_path: Path) -> None:
    from surgeon.examples import build_all

    recipe = ROOT / "recipes" / "quickstart.yaml"
    build_all(tmp_path, only=["tiny-cnn.onnx"])
    example_dir, out = tmp_path, tmp_path / "out.onnx"
    code = (
        "import contextlib, io\nfrom surgeon.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main(['apply', {str(recipe)!r}, '-i', {str(example_dir / 'tiny-cnn.onnx')!r}, "
        f"'-o', {str(out)!r}, '--no-verify'])\n"
        "assert rc == 0, rc"
    )
    loaded = _modules_after(code)
    assert {m for m in loaded if m.startswith("surgeon.passes.")} == {
        "surgeon.passes.rename_io",
        "surgeon.passes.cleanup",
    }
    assert "onnxruntime" not in loaded  # verification off: no session is built
    assert out.is_file()


def test_the_catalog_read_from_source_agrees_with_the_imported_passes() -> None:
    from surgeon.catalog import catalog
    from surgeon.pass_api import registry

    listed = {name: entry.summary for name, entry in catalog().items()}
    imported = {name: cls.summary() for name, cls in registry().items() if cls.__module__.startswith("surgeon.passes.")}
    assert listed == imported and len(listed) >= 20
