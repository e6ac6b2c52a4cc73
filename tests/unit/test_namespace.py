"""One import namespace: the repository's folders clients/, prompts/ and serving/ are `unifiedreward.*`.

Run from the repository root, Python also finds those folders under their bare names (the working directory is
on sys.path), so a stale `from clients import ...` would pass here and break in an installed wheel, or load a
second copy of a module whose exceptions then fail `except` clauses. This reads every tracked Python file."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BARE = {"clients", "prompts", "serving"}


def tracked_python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in listed.stdout.split()]


def bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in BARE]
    return found


def test_no_file_imports_the_bare_folder_names():
    files = tracked_python_files()
    assert len(files) > 50
    offenders = [hit for path in files for hit in bare_imports(path)]
    assert offenders == []


def test_the_namespace_maps_the_repository_folders():
    import unifiedreward.clients
    import unifiedreward.prompts
    import unifiedreward.serving

    for module, folder in ((unifiedreward.clients, "clients"), (unifiedreward.prompts, "prompts"),
                           (unifiedreward.serving, "serving")):
        assert Path(module.__file__).parent == ROOT / folder
