"""The one-bit "enough new rows since run R" signal of a device."""

from __future__ import annotations

from fedmq.edge_agent import readiness
from fedmq.edge_agent.readiness import Readiness


def test_ready_once_the_new_rows_arrive(tmp_path, monkeypatch):
    monkeypatch.setattr(readiness, "CHECK_SECONDS", 0.0)
    r = Readiness(str(tmp_path))
    r.trained("r1", 100)
    r.expect("r1", 10, rows_now=103)  # counted from the rows it trained on
    assert r.waiting and r.check(109) is None
    assert r.check(110) == "r1"
    assert not r.waiting and r.check(500) is None  # said once


def test_baseline_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(readiness, "CHECK_SECONDS", 0.0)
    Readiness(str(tmp_path)).expect("r1", 10, rows_now=50)
    again = Readiness(str(tmp_path))  # restarted: it never trained in r1 in this process
    again.expect("r1", 10, rows_now=58)
    assert again.check(59) is None and again.check(60) == "r1"
    other = Readiness(str(tmp_path))
    other.expect("r2", 10, rows_now=60)  # another run: counted from now
    assert other.check(69) is None and other.check(70) == "r2"


def test_without_state_dir_and_after_a_new_run(monkeypatch):
    monkeypatch.setattr(readiness, "CHECK_SECONDS", 0.0)
    r = Readiness(None)
    r.expect("r1", 5, rows_now=0)
    r.clear()
    assert not r.waiting and r.check(100) is None
