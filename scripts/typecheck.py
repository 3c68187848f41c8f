#!/usr/bin/env python3
"""mypy over the installed view of the source: ``fedmq.*`` as pyproject.toml maps the folders.

The repository keeps one top-level folder per room (models/, protocol/, broker/, ...) and the
packaging maps them beneath ``fedmq`` (``[tool.setuptools.package-dir]``). mypy resolves
imports from directories, not through setuptools' editable-install finder, so it would read
``from fedmq.models import ...`` as a missing module. This builds the namespace as a tree of
symbolic links under build/typecheck (from the same mapping the wheel uses, so the two cannot
drift apart) and runs ``mypy -p fedmq`` there, with the scripts beside it. Errors name
``fedmq/<folder>/<file>.py``.

    python scripts/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def build_tree() -> Path:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-dir"]
    if TREE.exists():
        shutil.rmtree(TREE)
    top = TREE / "fedmq"
    top.mkdir(parents=True)
    for entry in (ROOT / mapping.pop("fedmq")).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        link = TREE.joinpath(*package.split("."))
        if link.exists():
            sys.exit(f"pyproject.toml: package-dir maps {package} onto a name fedmq/ already has")
        link.symlink_to(ROOT / folder, target_is_directory=True)
    return TREE


def main(argv: list[str]) -> int:
    tree = build_tree()
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(ROOT / ".mypy_cache"), *argv]
    package = subprocess.run([*mypy, "-p", "fedmq"], cwd=tree).returncode
    # The scripts: top-level modules that import fedmq (found in the tree) and each other.
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.py"))
    env = {**os.environ, "MYPYPATH": str(tree)}
    return package or subprocess.run([*mypy, *scripts], cwd=ROOT / "scripts", env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
