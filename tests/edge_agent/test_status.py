"""edge_agent.status: the retained status says once why the device sits a round out."""

from __future__ import annotations

import logging

import pytest
from support import announcement as announce

from fedmq.edge_agent.health import FIXES, RoundSkipped
from fedmq.edge_agent.status import DeviceStatus
from fedmq.protocol.messages import StatusMessage


@pytest.fixture
def sent() -> list[tuple[str, StatusMessage, dict[str, object]]]:
    return []


def status(sent: list[tuple[str, StatusMessage, dict[str, object]]]) -> DeviceStatus:
    device = DeviceStatus("pi-1", "fedmq/f/status/pi-1", logging.getLogger("t.status"))

    def publish(topic: str, payload: bytes, **kw: object) -> bool:
        sent.append((topic, StatusMessage.from_bytes(payload), kw))
        return True

    device.attach(publish)
    return device


def test_a_skip_is_published_once_and_cleared_when_serving_again(sent, caplog) -> None:
    device = status(sent)
    skipped = RoundSkipped("data-error", "data file x.csv is empty", "data file is empty")
    device.sat_out(announce(2), skipped)
    device.sat_out(announce(2, issued_at=9.0), skipped)  # announced again, same failure
    assert len(sent) == 1 and sent[0][1].state == "online" and sent[0][2]["retain"]
    skip = sent[0][1].skipped
    assert skip is not None and (skip.round_id, skip.code) == (2, "data-error")
    lines = [r.getMessage() for r in caplog.records if r.name == "t.status"]
    assert len(lines) == 1 and "skipped (data-error)" in lines[0], lines
    device.serving()
    device.serving()  # nothing to clear the second time
    assert len(sent) == 2 and sent[1][1].skipped is None


def test_online_on_connect_never_waits_and_offline_names_no_skip(sent) -> None:
    device = status(sent)
    device.sat_out(announce(1), RoundSkipped("diverged", "blew up", "blew up"))
    device.online()
    device.offline()
    (_, online, kw), (_, offline, _) = sent[1:]
    assert kw["wait"] is False and online.skipped is not None
    assert offline.state == "offline" and offline.skipped is None
    assert StatusMessage.from_bytes(device.payload("offline")).state == "offline"


def test_a_refusal_of_the_gateways_terms_is_one_warning_per_run_and_a_skip_per_round(
        sent, caplog) -> None:
    device = status(sent)
    refused = RoundSkipped("privacy-budget", "quorum above max_quorum", "above max_quorum",
                           refusal=True)
    for run_id, round_id in (("r1", 1), ("r1", 2), ("r1", 3), ("r2", 1)):
        device.sat_out(announce(round_id, run_id=run_id), refused)
    assert [(s.skipped.run_id, s.skipped.round_id) for _, s, _ in sent if s.skipped] == [
        ("r1", 1), ("r1", 2), ("r1", 3), ("r2", 1)]
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "t.status"]
    assert said == [(logging.WARNING, line) for line in (
        "round 1 skipped (privacy-budget): quorum above max_quorum; fix: "
        + FIXES["privacy-budget"],) * 2]


def test_the_same_skip_every_round_is_logged_once_per_reason_and_run(sent, caplog) -> None:
    """Issue 24: a device missing one feature logged the same skip every round."""
    device = status(sent)
    mismatch = RoundSkipped("feature-mismatch", "missing: f23", "missing: f23")
    broken = RoundSkipped("data-error", "d.csv:3: column 'a' is not a number")
    for run_id, round_id, skip in (("r1", 1, mismatch), ("r1", 2, mismatch),
                                   ("r1", 3, broken), ("r1", 4, mismatch),
                                   ("r1", 5, mismatch), ("r2", 1, mismatch)):
        device.sat_out(announce(round_id, run_id=run_id), skip)
    assert len(sent) == 6  # the status names every round it skips
    said = [(r.levelno, r.getMessage().split(": fix:")[0].split("; fix:")[0])
            for r in caplog.records if r.name == "t.status" and r.levelno > logging.DEBUG]
    assert said == [(logging.ERROR, "round 1 skipped (feature-mismatch): missing: f23"),
                    (logging.ERROR, "round 3 skipped (data-error): d.csv:3: column 'a' is "
                                    "not a number"),
                    (logging.ERROR, "round 1 skipped (feature-mismatch): missing: f23")]
