"""mkdocs hook: give the API reference the installed package's layout.

The wheel installs one namespace, `unifiedreward`, mapped from the repository's folders clients/, prompts/
and serving/ by pyproject.toml's [tool.setuptools.package-dir]. mkdocstrings reads source statically and
cannot follow that mapping (it finds ./unifiedreward/ and no subpackages in it), so before each build this
lays the same mapping out as symlinks under .cache/api-src, the search path mkdocs.yml gives it.
"""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_SRC = ROOT / ".cache" / "api-src"


def lay_out(target: Path = API_SRC) -> Path:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(target, ignore_errors=True)
    for package, folder in sorted(mapping.items()):
        place = target.joinpath(*package.split("."))
        place.parent.mkdir(parents=True, exist_ok=True)
        if package.count(".") == 0:  # the namespace's own folder: its files, not the folder (subpackages go in it)
            place.mkdir(exist_ok=True)
            for source in (ROOT / folder).glob("*.py"):
                (place / source.name).symlink_to(source)
        else:
            place.symlink_to(ROOT / folder, target_is_directory=True)
    return target


def on_startup(command, dirty):
    """Before any plugin reads its config: mkdocstrings drops search paths that do not exist yet."""
    lay_out()
