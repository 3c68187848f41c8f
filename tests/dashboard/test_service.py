"""fedmq status's text and exit code from a state (the MQTT side: tests/integration)."""

from __future__ import annotations

import copy

from dashboard_support import STATE

from fedmq.dashboard.service import STALE_SECONDS, status_lines


def state(**run):
    s = copy.deepcopy(STATE)
    s["run"].update(run)
    return s


def test_a_running_round_is_exit_0_with_who_waits():
    lines, code = status_lines(state(deadline=STATE["now"] + 30))
    assert code == 0 and lines[0] == "fleet f, run run1: training"
    assert "round 3 of 5 (training), model version 2, deadline in 30 s" in lines[1]
    assert "  waiting: b" in lines
    assert any(line.startswith("  privacy: epsilon 1.500 of 8") for line in lines)


def test_a_deadline_long_gone_means_no_aggregator_runs_the_round():
    lines, code = status_lines(state(deadline=STATE["now"] - STALE_SECONDS - 5))
    assert code == 2 and "is the aggregator running?" in lines[1], lines
    lines, code = status_lines(state(deadline=STATE["now"] - 5))  # closing: not yet a fault
    assert code == 0 and "deadline passed 5 s ago" in lines[1]


def test_failed_finished_and_final_evaluation():
    assert status_lines(state(phase="failed", reason="quorum"))[1] == 1
    assert status_lines(state(phase="finished", deadline=None))[1] == 0
    lines, _ = status_lines(state(phase="evaluation", round=6))
    assert "final evaluation of the last model" in lines[1]


def test_no_run_and_a_wrong_signing_key_say_which():
    empty = state(id="")
    empty["ignored"] = {}
    assert "no run announced" in status_lines(empty)[0][0]
    empty["key"] = {"fingerprint": "ab" * 32, "issued_at": 1.0}  # started, no round yet
    lines, code = status_lines(empty)
    assert code == 0 and "key abababababababab... is announced, no round yet" in lines[0]
    empty["key"] = None
    empty["ignored"] = {"forged": 3}
    lines, code = status_lines(empty)
    assert code == 2 and "3 message(s)" in lines[0] and "aggregator_signing_key" in lines[0]
