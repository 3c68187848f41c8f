"""trustee.ledger: the certified entries a trustee adopted survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmq.protocol.decryption_log import LogEntry
from fedmq.protocol.errors import ConfigError
from fedmq.trustee.ledger import Ledger

ENTRY = LogEntry(("a", "b", "c"), {"a": "0" * 64, "b": "1" * 64, "c": "2" * 64},
                 {"trustee-1": b"\x01" * 64, "trustee-2": b"\x02" * 64})


def test_adopted_entries_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path).adopt("f", "run1/3", [ENTRY])
    again = Ledger(path)
    assert again.log("f", "run1/3") == [ENTRY] and again.log("f", "run1/4") == []
    assert path.stat().st_mode & 0o777 == 0o600
    again.adopt("f", "run1/3", [ENTRY])  # known entries are not written twice
    assert len(path.read_text().splitlines()) == 1


def test_a_torn_last_line_is_dropped_but_an_edited_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path).adopt("f", "statistics", [ENTRY])
    with path.open("a") as fh:
        fh.write('{"fleet": "f", "chain": "statis')
    assert Ledger(path).log("f", "statistics") == [ENTRY]
    path.write_text('garbage\n' + path.read_text())
    with pytest.raises(ConfigError, match=r"ledger\.jsonl:1"):
        Ledger(path)
