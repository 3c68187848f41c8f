"""The agents this aggregator accepts updates from: agent id -> Ed25519 public key.

A JSON file on the gateway, written by ``fedmq enroll`` and re-read at the start
of every round, so enrolling or revoking a device needs no restart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from protocol.errors import ConfigError, ProtocolError
from protocol.signing import Ed25519PublicKey, public_key_from_hex
from protocol.topics import check_name
from runtime.files import write_atomic

log = logging.getLogger(__name__)
SCHEMA = "fedmq.allow-list/1"


def read_entries(path: str | Path) -> dict[str, str]:
    """Agent id -> public key hex; a missing file is an empty list."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read allow-list {p}: {exc}") from exc
    agents = doc.get("agents") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(agents, dict):
        raise ConfigError(f"{p} is not a fedmq allow-list ({SCHEMA})")
    return {str(k): str(v) for k, v in agents.items()}


def load_allow_list(path: str | Path) -> dict[str, Ed25519PublicKey]:
    out = {}
    for agent, key in read_entries(path).items():
        try:
            check_name(agent, "agent id")
            out[agent] = public_key_from_hex(key)
        except (ConfigError, ProtocolError) as exc:
            raise ConfigError(f"allow-list {path}: entry {agent!r}: {exc}") from exc
    return out


def enroll(path: str | Path, agent_id: str, public_hex: str) -> bool:
    """Add or replace an agent's key; True if the list changed."""
    check_name(agent_id, "agent id")
    try:
        public_key_from_hex(public_hex)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    entries = read_entries(path)
    if entries.get(agent_id) == public_hex:
        return False
    if agent_id in entries:
        log.warning("replacing the enrolled key of %s", agent_id)
    entries[agent_id] = public_hex
    write_atomic(path, json.dumps({"schema": SCHEMA, "agents": dict(sorted(entries.items()))},
                                  indent=2).encode() + b"\n")
    return True


def revoke(path: str | Path, agent_id: str) -> bool:
    entries = read_entries(path)
    if entries.pop(agent_id, None) is None:
        return False
    write_atomic(path, json.dumps({"schema": SCHEMA, "agents": entries}, indent=2).encode()
                 + b"\n")
    return True
