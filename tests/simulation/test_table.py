"""The simulation's round table and metrics.csv: both metrics of one model per row."""

from __future__ import annotations

import csv
import math

from fedmq.protocol.sums.evaluation import FleetEvaluation
from fedmq.simulation.table import (
    METRICS_COLUMNS,
    RoundRow,
    fleet_metrics,
    metrics_header,
    row_line,
    write_metrics,
)


def _row(**kw) -> RoundRow:
    return RoundRow(**{"round_id": 3, "reported": 4, "expected": 5, "closed_by": "deadline",
                       "loss": 0.25, "score": 0.9, "seconds": 0.5, **kw})


def test_a_round_without_fleet_totals_says_so_in_the_line_and_leaves_the_csv_empty(tmp_path):
    # A rejected sum yields no evaluation: NaN, shown as n/a and written as "".
    assert all(math.isnan(v) for v in fleet_metrics(None)[:2])
    row = _row()
    line = row_line(row, 10, "accuracy")
    assert line.startswith("round   3/10 | agents   4/5") and "fleet      n/a" in line
    assert line.endswith("(deadline)")
    path = tmp_path / "metrics.csv"
    write_metrics(path, [row], "R^2")
    with path.open() as fh:
        [got] = list(csv.DictReader(fh))
    assert got["fleet_loss"] == got["fleet_R^2"] == "" and got["test_R^2"] == "0.900000"


def test_the_final_row_and_the_fleet_columns(tmp_path):
    evaluation = FleetEvaluation("logistic", 120, 0.3, {"accuracy": 0.875, "log_loss": 0.3,
                                                        "balanced_accuracy": 0.8})
    loss, score, n = fleet_metrics(evaluation)
    final = _row(round_id=11, closed_by="all", phase="evaluation", fleet_loss=loss,
                 fleet_score=score, fleet_rows=n, skipped={"diverged": 1, "bad-labels": 2})
    line = row_line(final, 10, "accuracy")
    assert line.startswith("final        | agents") and "fleet   0.3000  0.8750" in line
    path = tmp_path / "metrics.csv"
    write_metrics(path, [final], "accuracy")
    with path.open() as fh:
        reader = csv.DictReader(fh)
        [got] = list(reader)
    assert reader.fieldnames == metrics_header("accuracy") == [
        c.replace("{metric}", "accuracy") for c in METRICS_COLUMNS]
    assert (got["round"], got["phase"], got["fleet_accuracy"], got["skipped"]) == (
        "11", "evaluation", "0.875000", "bad-labels=2;diverged=1")
