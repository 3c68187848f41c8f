"""protocol.decryption_log: one hash-chained log per round, an entry counts with T votes."""

from __future__ import annotations

import pytest

from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.decryption_log import (
    LogEntry,
    certified,
    chain_of,
    entry_hash,
    hashes,
    vote,
)
from fedmq.protocol.errors import ProtocolError

SIGNERS = {f"t{i}": Signer.from_seed(f"log-{i}".encode()) for i in (1, 2, 3)}
KEYS = {t: s.public_key for t, s in SIGNERS.items()}


def members(devices: tuple[str, ...]) -> dict[str, str]:
    return {d: f"{i:064x}" for i, d in enumerate(devices)}


def entries(*sets: tuple[str, ...], by: tuple[str, ...] = ("t1", "t2")) -> list[LogEntry]:
    out: list[LogEntry] = []
    for devices in sets:
        prev = hashes(out, fleet="f", chain="r/1")
        digest = entry_hash("f", "r/1", len(out), prev[-1] if prev else b"", devices,
                            members(devices))
        out.append(LogEntry(tuple(sorted(devices)), members(devices),
                            {t: vote(SIGNERS[t], digest) for t in by}))
    return out


def test_a_log_with_t_votes_per_entry_is_certified_and_chained() -> None:
    log = entries(("a", "b", "c"), ("d", "e"))
    found = certified(log, fleet="f", chain="r/1", keys=KEYS, threshold=2)
    assert found == hashes(log, fleet="f", chain="r/1") and len(set(found)) == 2
    # The hash covers the position and the entry before: a reordered log is not certified.
    with pytest.raises(ProtocolError, match="entry 0 of the r/1 log has 0 valid"):
        certified(log[::-1], fleet="f", chain="r/1", keys=KEYS, threshold=2)


def test_too_few_or_foreign_votes_do_not_certify() -> None:
    one = entries(("a", "b"), by=("t1",))
    with pytest.raises(ProtocolError, match="1 valid trustee votes, 2 needed"):
        certified(one, fleet="f", chain="r/1", keys=KEYS, threshold=2)
    foreign = {"t1": KEYS["t1"], "t2": Signer.from_seed(b"other").public_key}
    with pytest.raises(ProtocolError, match="1 valid"):
        certified(entries(("a", "b")), fleet="f", chain="r/1", keys=foreign, threshold=2)
    with pytest.raises(ProtocolError):  # another round's log
        certified(entries(("a", "b")), fleet="f", chain="r/2", keys=KEYS, threshold=2)


def test_the_statistics_round_has_one_log_across_runs() -> None:
    assert chain_of("run-a", 0) == chain_of("run-b", 0) == "statistics"
    assert chain_of("run-a", 3) == "run-a/3"


def test_entries_round_trip_and_refuse_garbage() -> None:
    (entry,) = entries(("b", "a"))
    assert LogEntry.from_dict(entry.to_dict()) == entry
    m = {"a": "0" * 64}
    for bad in ({"devices": "a", "members": m, "votes": {}},
                {"devices": ["a", "a"], "members": m, "votes": {}},
                {"devices": ["a"], "members": m, "votes": {"t1": "zz"}},
                {"devices": ["a"], "members": {"a": "short"}, "votes": {}},
                {"devices": ["a"], "votes": {}}, []):
        with pytest.raises(ProtocolError):
            LogEntry.from_dict(bad)


def test_an_entry_cannot_be_shown_with_other_devices_under_the_same_votes() -> None:
    """{d1..d5} must not pass as {"d1\0d2", "d3\0d4\0d5"} (a review found the join
    ambiguous): ids are checked names, and the hash is of canonical JSON."""
    (entry,) = entries(("d1", "d2", "d3", "d4", "d5"))
    doc = entry.to_dict()
    doc["devices"] = ["d1\x00d2", "d3\x00d4\x00d5"]
    with pytest.raises(ProtocolError, match="invalid device id"):
        LogEntry.from_dict(doc)
    other = LogEntry(("d1", "d2"), entry.members, entry.votes)
    with pytest.raises(ProtocolError):
        certified([other], fleet="f", chain="r/1", keys=KEYS, threshold=2)
