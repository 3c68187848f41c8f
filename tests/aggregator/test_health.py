"""aggregator.health: a device skipping for the same reason every round is said once a run."""

from __future__ import annotations

import logging

import pytest

from fedmq.aggregator.config import HealthPolicy
from fedmq.aggregator.health import FleetHealth
from fedmq.protocol.health import Skip
from fedmq.protocol.server import ServerSettings


def _skip(round_id: int, code: str = "feature-mismatch",
          detail: str = "missing: f23; extra: foo") -> Skip:
    return Skip.make("run-1", round_id, code, detail)


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "fedmq.aggregator.health" and r.levelno >= logging.INFO]


def test_a_repeated_skip_is_one_warning_per_device_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    health = FleetHealth(HealthPolicy())

    def round_(round_id: int, skipped: dict[str, Skip]) -> None:
        for agent, skip in skipped.items():
            health.skipped(round_id, agent, skip)
        health.round_closed(round_id, phase="training", expected=["a", "b", "c"],
                            kept=["c"], evaluation=None, share=0.0, skipped=skipped)

    for r in range(1, 6):  # pi-a misses one feature in every round of a 5-round run
        round_(r, {"a": _skip(r)})
    round_(6, {"a": _skip(6), "b": _skip(6, "data-error", "data file line 3: column 'x' is "
                                                          "not a number")})
    round_(7, {"a": _skip(7), "b": _skip(7, "data-error")})
    said = _said(caplog)
    warnings = [m for level, m in said if level == logging.WARNING]
    assert warnings == [
        "round 1: a skips it (feature-mismatch): missing: f23; extra: foo; fix: make its [data] "
        "features the [model] features, same names and order (said once; later rounds count "
        "it in rounds.csv 'skipped')",
        "round 1: 1 device(s) skipped it: feature-mismatch 1",
        "round 6: b skips it (data-error): data file line 3: column 'x' is not a number; fix: "
        "fix its data file (the device's log names the line) (said once; later rounds count "
        "it in rounds.csv 'skipped')",
        "round 6: 2 device(s) skipped it: data-error 1, feature-mismatch 1"]
    assert [m for level, m in said if level == logging.INFO] == [
        *(f"round {r}: 1 device(s) skipped it: feature-mismatch 1" for r in range(2, 6)),
        "round 7: 2 device(s) skipped it: data-error 1, feature-mismatch 1"]


@pytest.mark.parametrize(("server", "kind", "hint"), [
    (ServerSettings(), "logistic", 'more [rounds] rounds, or [server] optimizer = "fedadam", '
     "server_lr = 0.2 (bench-noniid's most robust for classifiers), or a larger [server] "
     "server_lr than 1, would likely help"),
    (ServerSettings(), "linear", 'more [rounds] rounds, or [server] optimizer = "fedavgm", '
     "momentum = 0.7 (bench-noniid's most robust for regressions), or a larger [server] "
     "server_lr than 1, would likely help"),
    (ServerSettings(optimizer="fedadam", server_lr=0.05), "logistic", "more [rounds] rounds, "
     "or a larger [training] learning_rate than 0.02 (or [server] server_lr than 0.05, with "
     "optimizer fedadam), would likely help"),
])
def test_a_loss_still_falling_names_the_setting_that_would_help(
        caplog: pytest.LogCaptureFixture, server: ServerSettings, kind: str, hint: str) -> None:
    caplog.set_level(logging.INFO)
    health = FleetHealth(HealthPolicy(), server=server, learning_rate=0.02, kind=kind)
    health._losses = [0.7, 0.6, 0.5, 0.4]  # what round_closed keeps of the evaluations
    health.run_finished()
    [(level, line)] = _said(caplog)
    assert level == logging.WARNING  # as before: the run ended before the model did
    assert line == ("the fleet loss was still falling at the end (0.7 -> 0.4 over the last 3 "
                    f"rounds): the model has not converged; {hint}")
