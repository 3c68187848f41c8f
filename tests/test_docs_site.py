"""The docs site builds with ``mkdocs build --strict``: no broken link or anchor, no page
left out of the nav. CI runs it through this test (nothing else builds the site)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).parent / "mkdocs"

# No skip without mkdocs: the dev extra that `make test` installs has it, and CI must build.


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MKDOCS, "build", "--strict", "-f", root / "mkdocs.yml",
                           "-d", site], capture_output=True, text=True, timeout=300,
                          env={"PATH": str(MKDOCS.parent), "NO_MKDOCS_2_WARNING": "1"})


def copy_site_sources(dest: Path) -> Path:
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", dest / "docs")
    return dest


def test_site_builds_strict(tmp_path: Path) -> None:
    ran = build(ROOT, tmp_path / "site")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for page in sorted((ROOT / "docs").glob("*.md")):
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (tmp_path / "site" / name).exists(), name


@pytest.mark.parametrize("fault, named", [
    ("\nSee [nowhere](no-such-page.md).\n", "no-such-page.md"),  # a broken link
    ("\nSee [faults](deployment.md#no-such-heading).\n", "no-such-heading"),  # an anchor
])
def test_strict_build_fails_on_a_broken_link_or_anchor(tmp_path: Path, fault: str,
                                                       named: str) -> None:
    root = copy_site_sources(tmp_path)
    with (root / "docs" / "index.md").open("a") as fh:
        fh.write(fault)
    ran = build(root, tmp_path / "site")
    assert ran.returncode != 0 and named in ran.stdout + ran.stderr


def test_strict_build_fails_on_a_page_missing_from_nav(tmp_path: Path) -> None:
    root = copy_site_sources(tmp_path)
    (root / "docs" / "orphan.md").write_text("# Orphan\n")
    ran = build(root, tmp_path / "site")
    assert ran.returncode != 0 and "orphan.md" in ran.stdout + ran.stderr
