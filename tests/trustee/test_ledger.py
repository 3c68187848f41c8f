"""trustee.ledger: decrypted sets survive a restart; the statistics round spans runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmq.protocol.errors import ConfigError
from fedmq.trustee.ledger import Ledger


def test_a_restarted_trustee_still_refuses_what_combines_with_its_past(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path).record("f", "run1", 3, {"a", "b", "c"})
    again = Ledger(path)
    assert again.refusal("f", "run1", 3, frozenset({"a", "b"}), 2) is not None
    assert again.refusal("f", "run1", 4, frozenset({"a", "b"}), 2) is None  # another round
    assert path.stat().st_mode & 0o777 == 0o600


def test_statistics_sets_are_compared_across_runs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record("f", "run1", 0, {"a", "b", "c"})
    why = ledger.refusal("f", "run2", 0, frozenset({"a", "b"}), 2)
    assert why is not None and "across all runs" in why
    assert ledger.refusal("f", "run2", 0, frozenset({"a", "b", "c"}), 2) is None
    assert ledger.refusal("g", "run2", 0, frozenset({"a", "b"}), 2) is None  # another fleet


def test_a_torn_last_line_is_dropped_but_an_edited_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path).record("f", "r", 1, {"a", "b"})
    with path.open("a") as fh:
        fh.write('{"fleet": "f", "run": "r", "rou')
    assert Ledger(path).decrypted("f", "r", 1) == [frozenset({"a", "b"})]
    path.write_text('garbage\n{"fleet": "f", "run": "r", "round": 1, "devices": ["a"]}\n')
    with pytest.raises(ConfigError, match=r"ledger\.jsonl:1"):
        Ledger(path)
