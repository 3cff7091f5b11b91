"""No import cycles: every module of the `sd3` namespace imports alone, and no module needs itself.

The static check reads every import statement, those inside functions included (a cycle hidden
there still ties two modules together); the dynamic one imports each module in a fresh `sd3`.
"""

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    """Every module the wheel installs, by its dotted name (a package by its `__init__.py`)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / (setuptools["package-dir"].get(package) or package.replace(".", "/"))
               for package in setuptools["packages"]}
    for package in setuptools["packages"]:  # sub-packages of a re-mapped package (sd3.testing.tiny)
        parent, _, leaf = package.rpartition(".")
        if package not in setuptools["package-dir"] and parent in setuptools["package-dir"]:
            folders[package] = folders[parent] / leaf
    modules = {}
    for package, folder in folders.items():
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, wherever the statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sd3"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
    return found & set(modules)


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = trail[trail.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    assert len(modules) > 60  # the walk found the package
    for name in sorted(modules):
        if name not in state:
            visit(name, [name])


def test_every_module_imports_alone():
    """One interpreter; before each module every `sd3` module is forgotten, so it imports on its own.
    (`__main__` modules run a command when imported: they are left out.)"""
    names = sorted(name for name in _modules() if not name.endswith(".__main__"))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'sd3' or m.startswith('sd3.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        f"print('imported', {len(names)})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"imported {len(names)}" in done.stdout
    importlib.import_module("sd3")
