"""The round log: today's columns, and logs written before some of them."""

from __future__ import annotations

import csv

from fedmq.aggregator.store import PERSONAL_FIELDS, PRE_PERSONAL_FIELDS, RunStore


def test_a_log_from_before_the_personal_columns_reads_with_them_empty(tmp_path):
    row = ["r1", "1", "1", "all", "2", "2", "0", "40", "0.1", "1", "a b", "", "training", "40",
           "0.6", "0.8", "0.8", "0.9 0.7", "", "", "", "0.0000", "", ""]
    assert len(row) == len(PRE_PERSONAL_FIELDS)
    with (tmp_path / "rounds.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([PRE_PERSONAL_FIELDS, row])
    [read] = RunStore(tmp_path, "r1").log_rows()
    assert read["fleet_accuracy"] == "0.8"
    assert all(read[f] == "" for f in PERSONAL_FIELDS)
