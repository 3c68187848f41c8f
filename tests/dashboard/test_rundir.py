"""A run read from its directory (fedmq dashboard --run DIR) in the live page's shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedmq.aggregator.store import ROUND_LOG_FIELDS
from fedmq.dashboard.rundir import load_run
from fedmq.protocol.errors import ConfigError


def row(round_id: int, phase: str = "training", loss: str = "0.5", **cells: str) -> dict:
    base = dict.fromkeys(ROUND_LOG_FIELDS, "")
    base.update(run_id="run1", round=str(round_id), model_version=str(round_id),
                closed_by="all", reported="3", expected="3", rejected="1", total_weight="30",
                seconds="0.2", update_norm="0.1", phase=phase, fleet_loss=loss,
                fleet_accuracy="0.9")
    base.update(cells)
    return base


def make_run(tmp_path: Path, rows: list[dict], status: str = "finished") -> Path:
    run = tmp_path / "state" / "runs" / "run1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "run1", "fleet": "plant",
                                              "round_id": 2, "model_version": 2,
                                              "status": status}))
    with (run / "rounds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ROUND_LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "state" / "latest").symlink_to("runs/run1")
    return run


def test_a_finished_run_by_its_directory_or_its_state_dir(tmp_path):
    run = make_run(tmp_path, [row(0, "statistics", ""), row(1), row(2), row(3, "evaluation")])
    for path in (run, tmp_path / "state"):
        s = load_run(path).state()
        assert (s["source"], s["fleet"], s["run"]["id"], s["run"]["phase"]) == (
            "run", "plant", "run1", "finished")
        assert [r["round"] for r in s["rounds"]] == [0, 1, 2, 3]
        assert s["task"] == "classification" and s["run"]["rounds"] == 2
        json.dumps(s, allow_nan=False)


def test_non_finite_cells_become_null_and_an_interrupted_run_says_so(tmp_path):
    run = make_run(tmp_path, [row(1, loss="nan", seconds="inf")], status="open")
    s = load_run(run).state()
    assert s["rounds"][0]["loss"] is None and s["rounds"][0]["seconds"] is None
    assert s["run"]["phase"] == "interrupted" and "resumes" in s["run"]["reason"]
    json.dumps(s, allow_nan=False)


def test_no_run_here_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no run here"):
        load_run(tmp_path)
    run = make_run(tmp_path, [row(1)])
    (run / "rounds.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a fedmq round log"):
        load_run(run)
