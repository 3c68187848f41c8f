"""Packaging: every room of the house is mapped beneath ``fedmq`` and nothing is left out."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_is_a_fedmq_subpackage_mapped_onto_a_top_level_folder() -> None:
    mapping: dict[str, str] = SETUPTOOLS["package-dir"]
    assert all(name == "fedmq" or name.startswith("fedmq.") for name in mapping)
    assert all("/" not in folder and (ROOT / folder / "__init__.py").is_file()
               for folder in mapping.values())
    assert all(name.count(".") <= 1 for name in mapping)  # one room, one folder


def test_every_folder_with_an_init_is_listed_so_the_wheel_carries_it() -> None:
    """A new subpackage (protocol/foo/) left out of ``packages`` would be missing on devices."""
    found = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    listed = set(SETUPTOOLS["packages"])
    data_only = {name for name in listed - found  # listed so their files ship, no code
                 if not any((ROOT / name.replace(".", "/")).glob("*.py"))}
    assert found == listed - data_only and data_only == {"fedmq.templates"}


def test_no_folder_holds_python_modules_outside_a_package() -> None:
    """Every .py under a mapped folder sits in a folder with an __init__.py (else not shipped)."""
    loose = [str(py.relative_to(ROOT)) for folder in SETUPTOOLS["package-dir"].values()
             for py in (ROOT / folder).rglob("*.py")
             if not (py.parent / "__init__.py").is_file() and "__pycache__" not in py.parts]
    assert not loose
