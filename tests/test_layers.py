"""Imports run downward: fedmq (CLI, simulation) -> roles -> runtime -> protocol -> models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # package -> first-party packages it may import
    "models": {"models"},
    "protocol": {"protocol", "models"},  # round messages carry a ModelSpec
    "runtime": {"runtime", "protocol", "models"},
    "edge_agent": {"edge_agent", "runtime", "protocol", "models"},
    "aggregator": {"aggregator", "runtime", "protocol", "models"},
    "broker": {"broker", "runtime", "protocol", "models"},
    # An intermediate gateway: it checks updates exactly as the aggregator does.
    "relay": {"relay", "aggregator", "runtime", "protocol", "models"},
}
FIRST_PARTY = set(LAYERS) | {"fedmq", "benchmarks"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_what_lies_beneath_it(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in imports(path) & FIRST_PARTY - LAYERS[package]
    }
    assert not wrong


def test_only_the_transport_touches_paho() -> None:
    users = {str(p.relative_to(ROOT)) for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")
             if "paho" in imports(p)}
    assert users == {"runtime/transport.py"}
