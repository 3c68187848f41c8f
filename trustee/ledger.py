"""The device sets a trustee has decrypted, kept on disk before any partial decryption leaves.

One JSON line per decryption (fleet, run, round, devices), appended and fsynced
before the reply is published: a trustee killed and restarted mid-round still
knows what it decrypted and keeps refusing what would combine with it into a
small group (protocol.disclosure). Within a round the sets of that round are
compared; the statistics round (round 0), whose sums do not change from run to
run, is compared with the statistics sets of EVERY run of the fleet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from fedmq.protocol.disclosure import refusal
from fedmq.protocol.errors import ConfigError

STATISTICS_ROUND = 0


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rounds: dict[tuple[str, str, int], list[frozenset[str]]] = {}
        self._statistics: dict[str, list[frozenset[str]]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the trustee's ledger {self.path}: {exc}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                fleet, run, round_id = str(doc["fleet"]), str(doc["run"]), int(doc["round"])
                devices = frozenset(str(d) for d in doc["devices"])
            except (ValueError, KeyError, TypeError):
                if n == len(lines):  # a write cut short by a crash: it was never answered
                    break
                raise ConfigError(f"{self.path}:{n}: not a ledger line (fleet, run, round, "
                                  "devices); the ledger must not be edited") from None
            self._note(fleet, run, round_id, devices)

    def _note(self, fleet: str, run: str, round_id: int, devices: frozenset[str]) -> None:
        self._rounds.setdefault((fleet, run, round_id), []).append(devices)
        if round_id == STATISTICS_ROUND:
            self._statistics.setdefault(fleet, []).append(devices)

    def decrypted(self, fleet: str, run: str, round_id: int) -> list[frozenset[str]]:
        """The sets this decryption must be compared with."""
        if round_id == STATISTICS_ROUND:
            return list(self._statistics.get(fleet, []))
        return list(self._rounds.get((fleet, run, round_id), []))

    def refusal(self, fleet: str, run: str, round_id: int, devices: frozenset[str],
                min_group: int) -> str | None:
        why = refusal(self.decrypted(fleet, run, round_id), devices, min_group)
        if why and round_id == STATISTICS_ROUND and len(devices) >= min_group:
            why += "; the statistics round is compared across all runs of the fleet"
        return why

    def record(self, fleet: str, run: str, round_id: int, devices: Iterable[str]) -> None:
        """Append and fsync before the partial decryption is published."""
        members = frozenset(devices)
        if members in self.decrypted(fleet, run, round_id):
            return
        line = json.dumps({"fleet": fleet, "run": run, "round": round_id,
                           "devices": sorted(members)}, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._note(fleet, run, round_id, members)
