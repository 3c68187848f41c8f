"""edge_agent.memory: what an agent remembers of the run it serves, and when it re-sends."""

from __future__ import annotations

import dataclasses

import numpy as np
from support import announcement as announce

from fedmq.edge_agent.memory import HISTORY_KEPT, RunMemory
from fedmq.edge_agent.trainer import LocalUpdate


def test_a_new_run_forgets_the_rounds_of_the_last_one() -> None:
    memory = RunMemory()
    assert memory.join("r1") and not memory.join("r1")
    memory.answered(announce(1), None)
    memory.not_selected.add(2)
    assert (memory.served, memory.not_selected) == ({1}, {2})
    assert memory.join("r2")
    assert (memory.served, memory.not_selected, memory.history) == (set(), set(), {})


def test_a_repeated_announcement_gets_the_same_bytes_once_per_issue_time() -> None:
    memory = RunMemory()
    memory.join("r1")
    first = announce(3, issued_at=10.0)
    memory.answered(first, None)
    memory.sending(first, b"signed-frame")
    assert memory.resend(first) is None  # the broker handing out the same copy again
    again = dataclasses.replace(first, issued_at=11.0)  # the aggregator announced it again
    assert memory.resend(again) == b"signed-frame"
    assert memory.resend(again) is None  # that announcement is answered now
    assert memory.resend(announce(4, issued_at=12.0)) is None  # another round
    assert memory.resend(announce(3, run_id="r2", issued_at=13.0)) is None  # another run


def test_nothing_is_resent_before_anything_was_sent() -> None:
    memory = RunMemory()
    memory.join("r1")
    memory.answered(announce(1), None)  # answered, but the update never left (stopped)
    assert memory.resend(announce(1, issued_at=5.0)) is None


def test_the_history_keeps_only_the_newest_training_rounds() -> None:
    memory = RunMemory()
    memory.join("r1")
    rounds = HISTORY_KEPT + 10
    for r in range(1, rounds + 1):
        memory.answered(announce(r), LocalUpdate(r, np.zeros(4), 10, 1.0, 0.5))
    assert sorted(memory.history) == list(range(11, rounds + 1))
    assert memory.served == set(range(1, rounds + 1))  # the rounds served: all of them
