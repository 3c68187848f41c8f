"""Imports run downward: fedmq (CLI) -> simulation -> roles -> runtime -> protocol -> models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The rooms of the house: fedmq.<room> lives in the top-level folder <room>/.
LAYERS = {  # room -> rooms beneath fedmq it may import
    "models": {"models"},
    "protocol": {"protocol", "models"},  # round messages carry a ModelSpec
    "runtime": {"runtime", "protocol", "models"},
    "edge_agent": {"edge_agent", "runtime", "protocol", "models"},
    "aggregator": {"aggregator", "runtime", "protocol", "models"},
    "broker": {"broker", "runtime", "protocol", "models"},
    # An intermediate gateway: it checks updates exactly as the aggregator does.
    "relay": {"relay", "aggregator", "runtime", "protocol", "models"},
    # A key-share holder: it checks updates against its own allow-list (the aggregator's
    # file format), never the aggregator's judgement.
    "trustee": {"trustee", "aggregator", "runtime", "protocol", "models"},
    # A read-only view of the fleet: it reads finished runs in the aggregator's file format.
    "dashboard": {"dashboard", "aggregator", "runtime", "protocol", "models"},
    # The whole fleet on one machine: every role, never the command line above it.
    "simulation": {"simulation", "relay", "trustee", "dashboard", "edge_agent", "aggregator",
                   "broker", "runtime", "protocol", "models"},
}
# Inside protocol/: the round contract on top, then the privacy maths and the fleet sums,
# then the cryptography; every group may use protocol.errors.
PROTOCOL_GROUPS = {  # group -> groups it may import ("" is protocol/'s own modules)
    "crypto": {"crypto"},
    "privacy": {"privacy", "crypto"},
    "sums": {"sums"},
    "": {"", "crypto", "privacy", "sums"},
}
OLD_TOP_LEVEL = set(LAYERS) | {"benchmarks"}  # names that no longer exist at top level


def imports(path: Path) -> set[str]:
    """Dotted names this file imports absolutely (``from a.b import c`` gives a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def room(name: str) -> str | None:
    """fedmq.aggregator.service -> aggregator; fedmq.cli -> fedmq; numpy -> None."""
    parts = name.split(".")
    if parts[0] != "fedmq":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "fedmq"


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_room_imports_only_what_lies_beneath_it(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in python_files(package)
        for name in imports(path)
        if (r := room(name)) is not None and r not in LAYERS[package]
    }
    assert not wrong


def test_protocol_groups_import_downward_without_a_circle() -> None:
    wrong = set()
    for path in python_files("protocol"):
        rel = path.relative_to(ROOT / "protocol")
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        for name in imports(path):
            parts = name.split(".")
            if parts[:2] != ["fedmq", "protocol"] or parts[2:3] == ["errors"]:
                continue
            target = parts[2] if len(parts) > 3 and parts[2] in PROTOCOL_GROUPS else ""
            if len(parts) == 3 and parts[2] in PROTOCOL_GROUPS:
                target = parts[2]
            if target not in PROTOCOL_GROUPS[group]:
                wrong.add(f"protocol/{rel} imports {name}")
    assert not wrong


def test_nothing_imports_the_old_top_level_names() -> None:
    """Everything installs under fedmq.*: a bare ``import models`` would find a user's own."""
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for folder in [*LAYERS, "fedmq", "benchmarks", "tests", "scripts"]
        for path in python_files(folder)
        for name in imports(path)
        if name.split(".")[0] in OLD_TOP_LEVEL
    }
    assert not wrong


def test_only_the_transport_touches_paho() -> None:
    users = {str(p.relative_to(ROOT)) for pkg in LAYERS for p in python_files(pkg)
             if any(name.split(".")[0] == "paho" for name in imports(p))}
    assert users == {"runtime/transport.py"}
