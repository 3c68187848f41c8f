from __future__ import annotations

import sqlite3
import tracemalloc

import numpy as np
import pytest

from fedmq.edge_agent import readings_store
from fedmq.edge_agent.data import DataError
from fedmq.edge_agent.readings_store import SCHEMA_VERSION, Pending, ReadingsStore

COLS = ("a", "b", "y")


def test_rows_are_stored_typed_and_read_back_in_time_order(tmp_path):
    s = ReadingsStore(tmp_path / "r.db", COLS)
    s.add([(3.0, [1, 2, 0]), (1.0, [3.5, 4, 1]), (2.0, [5, 6, 1])])
    ts, table = s.latest(2)
    assert ts.tolist() == [2.0, 3.0] and table.tolist() == [[5, 6, 1], [1, 2, 0]]
    ts, _table = s.window(1.5, now=3.0)
    assert ts.tolist() == [2.0, 3.0]
    assert s.latest(10)[1].dtype == np.float64 and s.integrity() == "ok"
    db = sqlite3.connect(tmp_path / "r.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT typeof(c0) FROM rows LIMIT 1").fetchone()[0] == "real"
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] \
        == str(SCHEMA_VERSION)


def test_reads_across_chunks_equal_the_rows_in_time_order(tmp_path, monkeypatch):
    monkeypatch.setattr(readings_store, "READ_CHUNK", 3)
    s = ReadingsStore(tmp_path / "r.db", COLS)
    s.add([(float(t), [t, -t, t % 2]) for t in (5, 1, 9, 3, 7, 2, 8, 4, 6, 0)])
    ts, table = s.latest(7)
    assert ts.tolist() == [3, 4, 5, 6, 7, 8, 9] and table[:, 1].tolist() == [-3, -4, -5,
                                                                             -6, -7, -8, -9]
    ts, table = s.window(4.5, now=9.0)
    assert ts.tolist() == [5, 6, 7, 8, 9] and table[:, 0].tolist() == [5, 6, 7, 8, 9]
    assert s.latest(0)[1].shape == (0, 3) and s.window(1.0, now=100.0)[1].shape == (0, 3)


def test_a_round_reads_the_rows_without_holding_them_all_as_python_objects(tmp_path):
    s = ReadingsStore(tmp_path / "r.db", ("a", "b", "c", "y"))
    n = 20_000
    s.add([(float(i), [i, i, i, 1]) for i in range(n)])
    tracemalloc.start()
    try:
        _ts, table = s.latest(n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert table.shape == (n, 4)
    # The array itself is 800 KB; every row as a tuple of floats would be ~4 MB.
    assert peak < 2_000_000, peak


def test_full_synchronous_commits(tmp_path):
    s = ReadingsStore(tmp_path / "r.db", COLS)
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_retention_by_rows_and_by_age(tmp_path):
    s = ReadingsStore(tmp_path / "r.db", COLS, keep_rows=3, keep_days=1.0)
    now = 10 * 86400.0
    s.add([(now - 2 * 86400, [0, 0, 0])] + [(now - i, [i, i, 1]) for i in range(5)])
    assert s.retain(now) == 3  # one too old, then two beyond keep_rows (the oldest)
    ts, table = s.latest(10)
    assert ts.tolist() == [now - 2, now - 1, now] and table[:, 0].tolist() == [2, 1, 0]
    assert s.count() == 3


def test_pending_join_state_survives_reopening(tmp_path):
    s = ReadingsStore(tmp_path / "r.db", COLS)
    s.commit([], add_pending=[Pending(1, 0, 5.0, {"a": 1.0}), Pending(2, 1, 6.0, {"b": 2.0})])
    s.commit([(6.0, [1, 2, 0])], drop_pending=[1])
    s.close()
    again = ReadingsStore(tmp_path / "r.db", COLS)
    assert again.pending() == [Pending(2, 1, 6.0, {"b": 2.0})] and again.count() == 1


def test_other_columns_or_a_broken_file_are_one_clear_error(tmp_path):
    ReadingsStore(tmp_path / "r.db", COLS).close()
    with pytest.raises(DataError, match=r"holds columns a, b, y"):
        ReadingsStore(tmp_path / "r.db", ("a", "y"))
    (tmp_path / "bad.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match=r"bad\.db"):
        ReadingsStore(tmp_path / "bad.db", COLS)
