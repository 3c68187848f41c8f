"""Group commit: the batch's bounds, the durable log, and that nothing counts before its commit."""

from __future__ import annotations

import logging
import random
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.commit import FILE, Batch, UpdateLog
from fedmq.aggregator.config import Limits
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.resume import restore_updates
from fedmq.benchmarks.inbound import _close, check_sum, open_round
from fedmq.benchmarks.inbound_fleet import build_fleet
from fedmq.protocol.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def fleet(keypair):
    return build_fleet(bits=512, d=3, updates=10, seed=5, key=keypair)


def test_a_batch_is_due_at_its_count_bound():
    batch = Batch(max_updates=3, max_seconds=60.0, clock=Clock())
    assert not batch.due() and batch.time_left() is None
    batch.add("a", b"1")
    batch.add("b", b"2")
    assert not batch.due()
    batch.add("c", b"3")
    assert batch.due() and batch.take() == [("a", b"1"), ("b", b"2"), ("c", b"3")]
    assert not batch.due() and len(batch) == 0


def test_a_batch_is_due_when_its_oldest_update_waited_long_enough():
    clock = Clock()
    batch = Batch(max_updates=100, max_seconds=0.5, clock=clock)
    batch.add("a", b"1")
    clock.now += 0.25
    batch.add("b", b"2")  # the bound runs from the oldest, not the newest
    assert not batch.due() and batch.time_left() == 0.25
    clock.now += 0.25
    assert batch.due() and batch.time_left() == 0.0


@pytest.mark.parametrize("kw", [dict(max_updates=0, max_seconds=1.0),
                                dict(max_updates=1, max_seconds=0.0)])
def test_a_batch_needs_room_and_time(kw):
    with pytest.raises(ValueError):
        Batch(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(commit_updates=0), "commit_updates must be a positive integer"),
    (dict(commit_seconds=0.0), "commit_seconds must be a positive number"),
    (dict(commit_seconds=60.0), "commit_seconds must be at most 5"),
])
def test_commit_limits_are_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        Limits(**kw)


def test_the_log_keeps_whole_batches_in_order_and_refuses_a_member_twice(tmp_path):
    log = UpdateLog(tmp_path / FILE)
    assert log.load() == []
    log.append([("a", b"1"), ("b", b"2")])
    log.append([("c", b"3")])
    with pytest.raises(OSError, match="UNIQUE"):
        log.append([("d", b"4"), ("a", b"again")])  # all of it or none
    assert log.load() == [("a", b"1"), ("b", b"2"), ("c", b"3")]
    log.clear()
    assert log.load() == []
    log.close()


def test_a_torn_last_batch_is_dropped_on_restart(tmp_path):
    """The disk holds batch 1 and part of batch 2 (power cut mid-write): only batch 1
    comes back, and a restarted writer goes on from there."""
    log = UpdateLog(tmp_path / "live" / FILE)
    log.append([(f"a{i}", bytes(4000)) for i in range(5)])
    wal = tmp_path / "live" / f"{FILE}-wal"
    after_first = wal.stat().st_size
    log.append([(f"b{i}", bytes(4000)) for i in range(5)])
    assert wal.stat().st_size > after_first
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(tmp_path / "live" / FILE, crashed / FILE)
    torn = wal.read_bytes()[:after_first + (wal.stat().st_size - after_first) // 2]
    (crashed / f"{FILE}-wal").write_bytes(torn)
    log.close()
    restarted = UpdateLog(crashed / FILE)
    assert [m for m, _ in restarted.load()] == [f"a{i}" for i in range(5)]
    restarted.append([("b0", b"re-sent")])  # the torn batch's member is not "already stored"
    assert [m for m, _ in restarted.load()][-1] == "b0"
    restarted.close()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fedmq.aggregator.commit import UpdateLog
    log = UpdateLog(Path(sys.argv[1]))
    for k in range(100000):
        log.append([(f"m{k}-{i}", bytes(3000)) for i in range(50)])
        print(k, flush=True)
""")


@pytest.mark.parametrize("attempt", range(4))
def test_kill_9_mid_write_keeps_exactly_the_committed_batches(tmp_path, attempt):
    path = tmp_path / FILE
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    stop_after = random.Random(attempt).randrange(3, 40)
    seen = -1
    for line in proc.stdout:
        seen = int(line)
        if seen >= stop_after:
            break
    proc.send_signal(signal.SIGKILL)  # mid-transaction, most likely
    proc.wait(10)
    rows = UpdateLog(path).load()
    members = [m for m, _ in rows]
    assert len(set(members)) == len(members)  # nothing twice
    batches = len(rows) // 50
    assert len(rows) == batches * 50  # whole batches only
    # Every batch acknowledged before the kill is there (one more may have committed
    # between its commit and its line).
    assert seen + 1 <= batches <= seen + 2
    assert members == [f"m{k}-{i}" for k in range(batches) for i in range(50)]


def test_held_updates_count_only_once_their_batch_is_durable(fleet, tmp_path):
    state = open_round(fleet)
    cps = Checkpoints(tmp_path)
    inbound = Inbound(fleet.topics, fleet.public_key, cps,
                      limits=Limits(commit_updates=4, commit_seconds=5.0))
    for agent, payload in fleet.payloads[:6]:
        inbound.handle(state, fleet.topic(agent), payload)
    # Four committed (the count bound), two held: judged, not counted, not on the disk.
    assert len(state.accepted) == 4 and state.held == 2 and len(cps.load_updates()) == 4
    assert inbound.batches == 1 and len(state.payloads) == 4
    assert not state.waits_only_for_held  # four expected agents never sent anything
    agent, payload = fleet.payloads[5]
    inbound.handle(state, fleet.topic(agent), payload)  # a redelivery of a held update
    assert state.held == 2 and state.rejected == 0
    for agent, payload in fleet.payloads[6:]:
        inbound.handle(state, fleet.topic(agent), payload)
    assert state.waits_only_for_held and state.missing == set(state._held)
    inbound.flush(state)
    assert len(state.accepted) == 10 and state.held == 0 and not state.missing
    assert [a for a, _ in cps.load_updates()] == [a for a, _ in fleet.payloads]
    check_sum(fleet, _close(fleet, state))
    # A restart reads back exactly what was durable, and the same round sum.
    again = open_round(fleet)
    restore_updates(again, Checkpoints(tmp_path), fleet.public_key)
    assert again.accepted == state.accepted and again.ciphertext_sum == state.ciphertext_sum


def test_a_second_different_update_of_a_held_agent_is_conflicting(fleet, keypair, tmp_path):
    # The same agents and keys (the seed), other data (rows): other signed updates.
    other = build_fleet(bits=512, d=3, updates=10, seed=5, rows=20, key=keypair)
    state = open_round(fleet)
    inbound = Inbound(fleet.topics, fleet.public_key, Checkpoints(tmp_path))
    agent, payload = fleet.payloads[0]
    inbound.handle(state, fleet.topic(agent), payload)
    assert other.payloads[0][0] == agent and other.payloads[0][1] != payload
    inbound.handle(state, fleet.topic(agent), other.payloads[0][1])
    assert state.rejected_by == {"conflicting": 1} and state.held == 1
    inbound.flush(state)
    assert state.payloads == {agent: payload}


def test_a_batch_that_cannot_be_persisted_counts_nothing(fleet, tmp_path, caplog):
    (tmp_path / "open_round").write_bytes(b"not a directory")
    state = open_round(fleet)
    inbound = Inbound(fleet.topics, fleet.public_key, Checkpoints(tmp_path),
                      limits=Limits(commit_updates=3))
    caplog.set_level(logging.ERROR, "fedmq.aggregator.service")
    for agent, payload in fleet.payloads[:3]:
        inbound.handle(state, fleet.topic(agent), payload)
    assert state.accepted == [] and state.held == 0 and state.ciphertext_sum is None
    assert state.rejected_by == {"not-persisted": 3}
    assert "3 accepted updates not counted: cannot persist them" in caplog.text
    # The devices' re-sends are judged anew, not as duplicates of what never counted.
    (tmp_path / "open_round").unlink()
    for agent, payload in fleet.payloads[:3]:
        inbound.handle(state, fleet.topic(agent), payload)
    inbound.flush(state)
    assert len(state.accepted) == 3


@pytest.mark.parametrize("limits,message", [
    ({"commit_seconds": 10}, "[limits] commit_seconds: expected float <= 5.0, got 10"),
    ({"commit_updates": 0}, "[limits] commit_updates: expected int >= 1, got 0"),
])
def test_aggregator_toml_names_a_bad_commit_bound(limits, message):
    from fedmq.aggregator.config import AggregatorConfig

    doc = {"model": {"kind": "logistic", "features": ["a"], "n_classes": 2}, "limits": limits}
    with pytest.raises(ConfigError) as err:
        AggregatorConfig.from_dict(doc, source="aggregator.toml")
    assert str(err.value) == f"aggregator.toml: {message}"
    ok = AggregatorConfig.from_dict({**doc, "limits": {"commit_updates": 8}}).limits
    assert (ok.commit_updates, ok.commit_seconds) == (8, 0.05)


def test_a_round_at_its_deadline_commits_the_held_batch_before_it_closes(tmp_path, keypair,
                                                                          broker_port):
    """Batches wait up to 5 s here, the round only 3: at the deadline the two held updates
    are committed and counted, so the quorum of 2 is met with no extension allowed (it
    would fail the round if the held ones were not counted)."""
    import threading

    from support import AGGREGATOR_SIGNER, SPEC, EnrolledFleet, agent_config, local_data

    from fedmq.aggregator.config import AggregatorConfig, RoundPolicy
    from fedmq.aggregator.service import Aggregator
    from fedmq.edge_agent.agent import EdgeAgent
    from fedmq.protocol.messages import TrainingSettings
    from fedmq.protocol.topics import Topics
    from fedmq.runtime.transport import MqttSettings

    agents = [EdgeAgent(agent_config(broker_port, f"agent-{i}", **(
        {"straggle_seconds": 60.0} if i == 2 else {})), data=local_data(i, 40)) for i in range(3)]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        config = AggregatorConfig(
            topics=Topics("test"), spec=SPEC, mqtt=MqttSettings(port=broker_port),
            policy=RoundPolicy(rounds=1, round_timeout=3.0, quorum=2, min_agents=3,
                               start_timeout=20.0, max_extensions=0, final_evaluation=False),
            training=TrainingSettings(epochs=1, batch_size=8, learning_rate=0.1),
            limits=Limits(commit_updates=256, commit_seconds=5.0),
            state_dir=str(tmp_path / "aggregator"))
        agg = Aggregator(config, keypair=keypair, signer=AGGREGATOR_SIGNER,
                         allow_list=EnrolledFleet())
        agg.run()
    finally:
        for a in agents:
            a.stop()
        for t in threads:
            t.join(5)
    [result] = agg.results
    assert result.closed_by == "deadline" and sorted(result.reported) == ["agent-0", "agent-1"]
