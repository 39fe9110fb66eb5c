"""The package's layout: one concern a module, imports only downward, its documented table true.

docs/architecture.md's table lists every module of kdsearch/, lowest first: a module may import only
modules above it in that table (counting imports inside functions and under TYPE_CHECKING), so
data flows one way and there is no import cycle. Ray and Optuna are imported by the search's
modules alone, and rendering a report loads neither them nor torch.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kdsearch"
MAX_LINES = 600
# the only modules that import Ray or Optuna (the search side)
SEARCH_SIDE = {"optuna_space", "importances", "trainable", "ray_workarounds", "gpu", "cluster",
               "searchers", "status", "optuna_study", "tuner", "search"}


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(kdsearch modules, top-level outside packages) that `path` imports, anywhere in it."""
    ours, theirs = set(), set()
    names = set(_modules())
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "kdsearch":
                    ours.add(parts[1] if len(parts) > 1 else "__init__")
                else:
                    theirs.add(parts[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "kdsearch":
                theirs.add(parts[0])
            elif len(parts) > 1:
                ours.add(parts[1])
            else:  # from kdsearch import files: the module files, or a name of __init__
                ours.update(a.name if a.name in names else "__init__" for a in node.names)
    return ours, theirs


def _readme_layout() -> list[str]:
    """The modules docs/architecture.md's layout table lists, in its order (README links it)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    assert "docs/architecture.md" in (REPO / "README.md").read_text()
    return [m.group(1) for m in re.finditer(r"^\s*kdsearch/(\w+)\.py\b", text, re.M)]


def test_readme_lists_every_module_once() -> None:
    layout = _readme_layout()
    assert len(layout) == len(set(layout)), "a module listed twice"
    assert set(layout) == set(_modules()), set(layout) ^ set(_modules())


def test_every_import_goes_down_the_layout_and_none_comes_back() -> None:
    rank = {m: i for i, m in enumerate(_readme_layout())}
    upward = []
    for name, path in _modules().items():
        ours, _ = _imports(path)
        upward += [f"{name} imports {other}" for other in sorted(ours)
                   if other != name and rank[other] >= rank[name]]
    assert upward == []  # (and with every edge downward, no cycle can close)


def test_ray_and_optuna_are_imported_on_the_search_side_alone() -> None:
    found = {name for name, path in _modules().items()
             if _imports(path)[1] & {"ray", "optuna"}}
    assert found <= SEARCH_SIDE, found - SEARCH_SIDE
    assert {"trainable", "searchers", "cluster", "search"} <= found  # (the check sees them)


def test_rendering_a_report_needs_neither_torch_nor_ray() -> None:
    code = ("import kdsearch.report, sys; "
            "print('torch' in sys.modules, 'ray' in sys.modules, 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_no_module_is_past_six_hundred_lines() -> None:
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_tests_and_benchmarks_use_public_names() -> None:
    private = []
    for path in [*sorted((REPO / "tests").glob("*.py")), *sorted((REPO / "bench").glob("*.py"))]:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdsearch"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
        # a private attribute reached through its module: kdsearch.<module>.<_name>
        private += [f"{path.name}: {m.group(0)}"
                    for m in re.finditer(r"\bkdsearch\.\w+\._\w+", text)]
        private += [f"{path.name}: {m.group(0)}"
                    for m in re.finditer(r"setattr\([\w.]+, \"_\w+\"", text)]
    assert private == []
