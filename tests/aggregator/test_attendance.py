"""aggregator.attendance: start, wait or give up before a round, and each round's pick."""

from __future__ import annotations

import random
import threading

import pytest

from fedmq.aggregator.attendance import Attendance
from fedmq.aggregator.closing import RoundFailed
from fedmq.aggregator.config import RoundPolicy

ENROLLED = {f"dev-{i:02d}": object() for i in range(25)}


def attendance(online: dict[str, bool], **policy: object) -> Attendance:
    return Attendance(RoundPolicy(**policy), online, lambda: ENROLLED,  # type: ignore[arg-type]
                      rng=random.Random(7))


def test_it_waits_until_min_agents_are_online() -> None:
    online: dict[str, bool] = {}
    drained: list[float] = []

    def drain(timeout: float) -> None:  # each drain brings one more status
        drained.append(timeout)
        online[f"dev-{len(drained):02d}"] = True

    attendance(online, min_agents=3, quorum=2).wait(threading.Event(), drain)
    assert len(drained) == 3 and len(online) == 3


def test_after_the_start_timeout_it_starts_with_the_quorum_or_gives_up(caplog) -> None:
    online = {"dev-00": True, "dev-01": True, "dev-02": False}
    attendance(online, min_agents=3, quorum=2, start_timeout=0.05).wait(
        threading.Event(), lambda t: None)
    assert "only 2 of 3 agents online" in caplog.text and "dev-02" in caplog.text
    online["dev-01"] = False
    with pytest.raises(RoundFailed, match=r"only 1 agents online after 0\.05 s, quorum is 2"):
        attendance(online, min_agents=3, quorum=2, start_timeout=0.05).wait(
            threading.Event(), lambda t: None)


def test_training_rounds_sample_the_others_take_everyone() -> None:
    online = {name: True for name in ENROLLED} | {"dev-24": False}
    people = attendance(online, quorum=2, sample_count=5)
    picked, sampled = people.select("training")
    assert sampled and len(picked) == 5 and picked <= people.online()
    for phase in ("statistics", "evaluation"):
        assert people.select(phase) == (people.online(), False)
    assert (people.quorum("training"), people.quorum("evaluation")) == (2, 2)
    assert attendance(online, quorum=5).quorum("evaluation") == 2  # measures, with >= 2
    assert attendance(online).select("training") == (people.online(), False)


def test_the_waiting_line_names_at_most_twenty_missing_devices() -> None:
    line = attendance({"dev-00": True}).not_online()
    assert line.startswith("; enrolled, not online: dev-01, dev-02") and "and 4 more" in line
    assert attendance({n: True for n in ENROLLED}).not_online() == ""
    assert attendance({"dev-00": False}).never_online() == set(ENROLLED) - {"dev-00"}
