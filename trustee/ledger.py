"""The certified decryption log a trustee has seen, on disk before any partial decryption leaves.

Per log (protocol.decryption_log: one per round, one per fleet for the statistics
round) the trustee keeps the certified entries it has adopted, each one JSON line,
appended and fsynced before its reply is published. Adopting is what commits it: it
refuses any log that differs from these entries, so two different entries at one
position can never both gather the T trustees their decryption needs (T is a
majority). A restarted trustee keeps that commitment and every set decrypted before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedmq.protocol.decryption_log import LogEntry
from fedmq.protocol.errors import ConfigError, ProtocolError

Chain = tuple[str, str]  # (fleet, chain id)


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._logs: dict[Chain, list[LogEntry]] = {}
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
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError, ProtocolError):
                if n == len(lines):  # a write cut short by a crash: it was never answered
                    break
                raise ConfigError(f"{self.path}:{n}: not a ledger line; the ledger must not "
                                  "be edited") from None

    def _apply(self, doc: dict[str, Any]) -> None:
        chain = (str(doc["fleet"]), str(doc["chain"]))
        position = int(doc["position"])
        if doc["kind"] == "entry":
            log = self._logs.setdefault(chain, [])
            if position != len(log):
                raise ValueError("entries out of order")
            log.append(LogEntry.from_dict(doc["entry"]))
        else:
            raise ValueError("unknown ledger line")

    def _append(self, doc: dict[str, Any]) -> None:
        line = json.dumps(doc, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._apply(doc)

    def log(self, fleet: str, chain: str) -> list[LogEntry]:
        return list(self._logs.get((fleet, chain), []))

    def adopt(self, fleet: str, chain: str, entries: list[LogEntry]) -> None:
        """Append certified entries beyond those known (checked by the caller)."""
        known = len(self._logs.get((fleet, chain), []))
        for position, entry in enumerate(entries[known:], known):
            self._append({"fleet": fleet, "chain": chain, "kind": "entry",
                          "position": position, "entry": entry.to_dict()})
