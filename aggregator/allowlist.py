"""The agents this aggregator accepts updates from: agent id -> Ed25519 public key.

A JSON file on the gateway, written by ``fedmq enroll`` and re-read at the start
of every round, so enrolling or revoking a device needs no restart. Every change
is a read-modify-write under a file lock, so parallel enrolls keep every entry.
Its optional ``relays`` section (``fedmq enroll-relay``) maps a relay id to its key,
or to ``{"key": HEX, "devices": [ids]}``: the devices it serves (its assignment).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from fedmq.protocol.crypto.signing import Ed25519PublicKey, public_key_from_hex
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.topics import check_name
from fedmq.runtime.files import write_atomic
from fedmq.runtime.locks import locked

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


@dataclass(frozen=True)
class RelayEntry:
    """An enrolled relay: its key, and the devices it serves (None: no assignment)."""

    key: str  # Ed25519 public key, hex
    devices: tuple[str, ...] | None = None

    def to_json(self) -> object:
        # The plain string is the form without an assignment, as older versions wrote it.
        return self.key if self.devices is None else {"key": self.key,
                                                      "devices": list(self.devices)}


def read_relay_entries(path: str | Path) -> dict[str, RelayEntry]:
    """Relay id -> entry: the optional ``relays`` section (``fedmq enroll-relay``), checked
    whole (ids, keys, assignments, a device assigned twice); ConfigError naming the key.

    A relay (``fedmq relay``) forwards one signed partial sum for its devices; it is
    never an agent, and an agent entry never makes anyone a relay.
    """
    p = Path(path)
    if not p.exists():
        return {}
    read_entries(p)  # the same file checks
    relays = json.loads(p.read_text()).get("relays", {})
    if not isinstance(relays, dict):
        raise ConfigError(f"{p}: 'relays' must map relay ids to public keys")
    out = {str(r): _relay_entry(v, f"allow-list {p}: relay {r!r}") for r, v in relays.items()}
    _one_relay_per_device(out, f"allow-list {p}")
    return out


def _one_relay_per_device(relays: Mapping[str, RelayEntry], where: str) -> None:
    owner: dict[str, str] = {}
    for relay_id, entry in relays.items():
        for device in entry.devices or ():
            if device in owner:
                raise ConfigError(f"{where}: relay {relay_id!r}: device {device!r} is already "
                                  f"assigned to relay {owner[device]!r}")
            owner[device] = relay_id


def _relay_entry(value: object, where: str) -> RelayEntry:
    if isinstance(value, dict):
        key, devices = value.get("key"), value.get("devices")
        if set(value) - {"key", "devices"} or not isinstance(key, str) or not (
                isinstance(devices, list) and all(isinstance(d, str) for d in devices)):
            raise ConfigError(f"{where}: expected a public key or {{\"key\": HEX, "
                              f"\"devices\": [ids]}}")
        entry = RelayEntry(key, tuple(devices))
    elif isinstance(value, str):
        entry = RelayEntry(value)
    else:
        raise ConfigError(f"{where}: expected a public key or {{\"key\": HEX, "
                          f"\"devices\": [ids]}}")
    try:
        for device in entry.devices or ():
            check_name(device, "device id")
        if entry.devices is not None and len(set(entry.devices)) != len(entry.devices):
            raise ConfigError("a device is listed twice")
        public_key_from_hex(entry.key)
    except (ConfigError, ProtocolError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return entry


def load_relays(path: str | Path) -> dict[str, Ed25519PublicKey]:
    return _keys(path, {r: e.key for r, e in read_relay_entries(path).items()})


def load_relay_devices(path: str | Path) -> dict[str, frozenset[str]]:
    """Relay id -> the devices it serves, for the relays enrolled with an assignment."""
    return {r: frozenset(e.devices) for r, e in read_relay_entries(path).items()
            if e.devices is not None}


def load_allow_list(path: str | Path) -> dict[str, Ed25519PublicKey]:
    return _keys(path, read_entries(path))


Keys = Mapping[str, Ed25519PublicKey]
Assignments = Mapping[str, frozenset[str]]
_V = TypeVar("_V")


class AllowListFile:
    """The allow-list file, read again at every call once it changed: enrolling or
    revoking a device or a relay needs no restart.

    A file broken mid-run (a bad hand edit) must not kill the run: the list read last
    is kept, with an error line; a first read that fails raises ConfigError (at start a
    broken file stops us). ``agents``/``relays``: fixed lists used instead of the file
    (tests, embedders), each on its own; ``relay_devices`` goes with fixed ``relays``
    (none given: no relay has an assignment).
    """

    def __init__(self, path: str | Path, *, agents: Keys | None = None,
                 relays: Keys | None = None, relay_devices: Assignments | None = None) -> None:
        self.path = path
        if relays is not None and relay_devices is None:
            relay_devices = {}
        self._fixed: dict[str, Mapping[str, object] | None] = {
            "allow-list": agents, "relays": relays, "relay assignments": relay_devices}
        self._last: dict[str, Mapping[str, object]] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}  # what -> the file read last

    def agents(self) -> Keys:
        """Agent id -> key: the devices whose updates count."""
        return self._read("allow-list", load_allow_list)

    def relays(self) -> Keys:
        """Relay id -> key: the relays whose partial sums count (fedmq relay)."""
        return self._read("relays", load_relays)

    def relay_devices(self) -> Assignments:
        """Relay id -> the devices it may list, for relays enrolled with an assignment."""
        return self._read("relay assignments", load_relay_devices)

    def _read(self, what: str, load: Callable[[str | Path], Mapping[str, _V]]) -> Mapping[str, _V]:
        fixed = self._fixed[what]
        if fixed is not None:
            return cast(Mapping[str, _V], fixed)
        # Parsed again only when the file changed (enroll writes a new file and renames
        # it): a trustee consults the list for every update, 1,000 keys each time.
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp is not None and what in self._last and self._stamps.get(what) == stamp:
            return cast(Mapping[str, _V], self._last[what])
        try:
            self._last[what] = load(self.path)
            if stamp is not None:
                self._stamps[what] = stamp
        except ConfigError as exc:
            if what not in self._last:
                raise
            log.error("%s; keeping the %s read before", exc, what)
        return cast(Mapping[str, _V], self._last[what])


def _keys(path: str | Path, entries: dict[str, str]) -> dict[str, Ed25519PublicKey]:
    out = {}
    for agent, key in entries.items():
        try:
            check_name(agent, "agent id")
            out[agent] = public_key_from_hex(key)
        except (ConfigError, ProtocolError) as exc:
            raise ConfigError(f"allow-list {path}: entry {agent!r}: {exc}") from exc
    return out


def _write(path: str | Path, entries: dict[str, str],
           relays: dict[str, RelayEntry] | None = None) -> None:
    relays = read_relay_entries(path) if relays is None else relays  # kept as they are
    doc: dict[str, object] = {"schema": SCHEMA, "agents": dict(sorted(entries.items()))}
    if relays:
        doc["relays"] = {r: e.to_json() for r, e in sorted(relays.items())}
    write_atomic(path, json.dumps(doc, indent=2).encode() + b"\n")


def enroll_relay(path: str | Path, relay_id: str, public_hex: str,
                 devices: Sequence[str] | None = None, *, clear_devices: bool = False) -> bool:
    """Add or replace a relay's key; True if the list changed.

    ``devices``: its assignment (replaces the one before); None keeps the one it has (a
    new key is no new subtree), ``clear_devices`` drops it.
    """
    _check(relay_id, public_hex)
    with locked(path):
        relays = read_relay_entries(path)
        old = relays.get(relay_id)
        kept = None if clear_devices or old is None else old.devices
        entry = RelayEntry(public_hex, kept if devices is None else tuple(sorted(devices)))
        if old == entry:
            return False
        relays[relay_id] = _relay_entry(entry.to_json(), f"relay {relay_id!r}")
        _one_relay_per_device(relays, f"enroll-relay {relay_id!r}")
        _write(path, read_entries(path), relays)
    return True


def _check(agent_id: str, public_hex: str) -> None:
    check_name(agent_id, "agent id")
    try:
        public_key_from_hex(public_hex)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc


def enroll(path: str | Path, agent_id: str, public_hex: str) -> bool:
    """Add or replace an agent's key; True if the list changed."""
    return bool(enroll_many(path, [(agent_id, public_hex)]))


def enroll_many(path: str | Path, pairs: list[tuple[str, str]]) -> list[str]:
    """Add or replace several agents' keys in one locked write; the ids that changed.

    Every pair is checked before the file is touched: one bad key changes nothing.
    """
    for agent_id, public_hex in pairs:
        _check(agent_id, public_hex)
    with locked(path):
        entries = read_entries(path)
        changed = []
        for agent_id, public_hex in pairs:
            if entries.get(agent_id) == public_hex:
                continue
            if agent_id in entries:
                log.warning("replacing the enrolled key of %s", agent_id)
            entries[agent_id] = public_hex
            changed.append(agent_id)
        if changed:
            _write(path, entries)
    return changed


def revoke(path: str | Path, agent_id: str) -> bool:
    with locked(path):
        entries = read_entries(path)
        if entries.pop(agent_id, None) is None:
            return False
        _write(path, entries)
    return True


def read_key_file(path: str | Path) -> list[tuple[str, str]]:
    """``id,public_key`` lines (``#`` comments, blank lines and an ``id,public_key`` header
    are skipped) -> pairs; the first bad line raises ConfigError naming ``file:line``."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from None
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.replace(" ", "") == "id,public_key":
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not all(fields):
            raise ConfigError(f"{p}:{n}: expected id,public_key (fedmq agent --config "
                              f"agent.toml --show-public-key --csv prints one), got {line!r}")
        agent_id, public_hex = fields
        try:
            _check(agent_id, public_hex)
        except ConfigError as exc:
            raise ConfigError(f"{p}:{n}: {exc}") from None
        if agent_id in seen:
            raise ConfigError(f"{p}:{n}: agent {agent_id!r} already on line {seen[agent_id]}")
        seen[agent_id] = n
        pairs.append((agent_id, public_hex))
    if not pairs:
        raise ConfigError(f"{p}: no id,public_key lines")
    return pairs
