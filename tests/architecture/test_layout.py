"""The layout keeps its promises: no import cycle, small modules, docs that name real paths, no machine paths.

The layer rules themselves (who may import whom) are import-linter contracts in pyproject.toml, run by
`make test` as `lint-imports`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import grimp
import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def tracked_files(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in out.stdout.split()]


def test_no_import_cycle_between_modules_counting_imports_inside_functions():
    graph = grimp.build_graph("engine", "nodes", include_external_packages=False)
    imports = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            # A package's own __init__ naming its submodules is how Python packages work, not a cycle.
            if not imported.startswith(module + "."):
                imports.add_edge(module, imported)
    cycles = sorted(sorted(group) for group in nx.strongly_connected_components(imports) if len(group) > 1)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_module_in_engine_or_nodes_is_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in tracked_files("engine/*.py", "nodes/*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_architecture_doc_names_only_paths_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:engine|nodes|web|tests|bench|workflows|docs)/[\w./-]*)`", text))
    assert named, "docs/architecture.md names no paths"
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    assert missing == []


# Each pattern is written so that it does not match itself: this file is checked like any other.
@pytest.mark.parametrize("pattern", [r"/wor[k]/", r"/roo[t]/", r"/hom[e]/\w", r"C:\\\\User[s]"])
def test_no_absolute_path_of_a_machine_in_the_repository(pattern):
    hits = []
    for path in tracked_files():
        if path.suffix in {".png", ".jpg", ".safetensors", ".gguf", ".onnx"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(pattern, line):
                hits.append(f"{path.relative_to(ROOT)}:{number}")
    assert hits == []
