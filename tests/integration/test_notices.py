"""An agent learns why it is ignored, is taken in once enrolled, and stops when a run fails.

The real roles on an embedded broker: an aggregator reading its allow-list file
(as ``fedmq aggregator`` does), in-process edge agents, short round timeouts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from support import (
    AGGREGATOR_SIGNER,
    agent_config,
    local_data,
    run_in_thread,
    signer_for,
    wait_until,
)

from fedmq.aggregator.allowlist import enroll
from fedmq.aggregator.service import Aggregator, RoundFailed
from fedmq.edge_agent.agent import EdgeAgent

pytestmark = pytest.mark.slow


def enroll_command(agent: str) -> str:
    return (f"fedmq enroll --config aggregator.toml --agent {agent} "
            f"--public-key {signer_for(agent).public_hex}")


def lines(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == logger and text in r.getMessage()]


def file_aggregator(make_aggregator, port: int, allow: Path, keypair, **policy) -> Aggregator:
    """An aggregator that reads ``allow`` like ``fedmq aggregator`` (re-read each round)."""
    config = replace(make_aggregator(port, **policy).config, allow_list_file=str(allow))
    return Aggregator(config, keypair=keypair, signer=AGGREGATOR_SIGNER)


def test_an_unenrolled_agent_is_told_and_counts_once_enrolled(
        tmp_path, broker_port, make_aggregator, keypair, start_agents, caplog):
    """agent-1 is enrolled only after its notice arrived: its update of that very round
    is asked for again and counts, and so do the next round's. agent-2 is never enrolled:
    it gets at most one notice a round, its line is logged once. The round opens with the one
    enrolled device online (min_agents 1): unenrolled devices do not count as online."""
    caplog.set_level(logging.INFO)
    allow = tmp_path / "allow_list.json"
    enroll(allow, "agent-0", signer_for("agent-0").public_hex)
    aggregator = file_aggregator(make_aggregator, broker_port, allow, keypair, rounds=2,
                                 quorum=2, min_agents=1, round_timeout=4.0)
    start_agents(broker_port, 3)
    thread, out = run_in_thread(aggregator.run)
    line = wait_until(lambda: lines(caplog, "fedmq.edge_agent.agent", enroll_command("agent-1")),
                      "agent-1's notice", timeout=20)
    assert line[0].startswith("round 1: the aggregator does not know this device's signing "
                              "key: on the gateway run  fedmq enroll")
    enroll(allow, "agent-1", signer_for("agent-1").public_hex)
    thread.join(40)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert [sorted(r.reported) for r in aggregator.results] == [["agent-0", "agent-1"]] * 2
    # Round 1 waits for agent-1, so agent-2's update always arrives while it is open. Rounds 2
    # and 3 close once agent-0 and agent-1 have reported: agent-2's update may come after the
    # close (a late update gets no notice), so those notices are not counted here; the
    # notifier's one-per-round rule is tested in tests/aggregator/test_notices.py.
    sent = lines(caplog, "fedmq.aggregator.service", "notice not-enrolled sent to agent-2")
    rounds = [int(line.rsplit(" ", 1)[1]) for line in sent]
    assert 1 in rounds and len(rounds) == len(set(rounds)), sent
    # One line per code and run on the device, however many notices came.
    assert len(lines(caplog, "fedmq.edge_agent.agent", enroll_command("agent-2"))) == 1
    assert lines(caplog, "fedmq.aggregator.service", "agent-1 enrolled now")


def test_enrolling_mid_round_rescues_a_round_that_waits_for_quorum(
        tmp_path, broker_port, make_aggregator, keypair, start_agents, caplog):
    """The loopback try-out of docs/deployment.md: quorum 2, one device not enrolled. Enrolling it
    mid-round used to change nothing (the round kept the allow-list it opened with and
    never asked again): the run failed after its extensions."""
    caplog.set_level(logging.INFO)
    allow = tmp_path / "allow_list.json"
    enroll(allow, "agent-0", signer_for("agent-0").public_hex)
    aggregator = file_aggregator(make_aggregator, broker_port, allow, keypair, rounds=1,
                                 quorum=2, min_agents=1, round_timeout=3.0, max_extensions=2)
    start_agents(broker_port, 2)
    thread, out = run_in_thread(aggregator.run)
    wait_until(lambda: lines(caplog, "fedmq.aggregator.service", "rejected update from agent-1"),
               "agent-1's rejection", timeout=20)
    enroll(allow, "agent-1", signer_for("agent-1").public_hex)
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert [sorted(r.reported) for r in aggregator.results] == [["agent-0", "agent-1"]]


def test_a_failed_run_stops_the_agents_that_wait_for_it(
        broker_port, make_aggregator, caplog):
    """Quorum never reached: the aggregator says so in a signed final message and exits;
    agents with exit_when_finished exit with one line, the others wait for a new run."""
    caplog.set_level(logging.INFO)
    agents = [EdgeAgent(agent_config(broker_port, name, **kw), data=local_data(i, 40))
              for i, (name, kw) in enumerate([("agent-0", {}), ("unenrolled-1", {}),
                                              ("agent-2", {"exit_when_finished": False})])]
    runs = [run_in_thread(a.run) for a in agents]
    # Only enrolled devices count as online: unenrolled-1 does not.
    aggregator = make_aggregator(broker_port, rounds=2, quorum=4, min_agents=2,
                                 round_timeout=1.0, max_extensions=1)
    try:
        with pytest.raises(RoundFailed, match="quorum 4 not reached after 1 extensions"):
            aggregator.run()
        for (thread, out), agent in zip(runs[:2], agents[:2], strict=True):
            thread.join(10)
            assert not thread.is_alive() and "error" not in out
            assert agent.run_failed is not None and "quorum 4 not reached" in agent.run_failed
        assert runs[2][0].is_alive()  # exit_when_finished = false: waits for the next run
        failed = lines(caplog, "fedmq.edge_agent.agent", "the aggregator gave up run")
        assert any(line.endswith("; exiting") for line in failed)
        assert any(line.endswith("; waiting for a new run") for line in failed)
    finally:
        for agent in agents:
            agent.stop()
        for thread, _ in runs:
            thread.join(5)


def test_a_late_agent_does_not_stop_for_an_earlier_failed_run(broker_port, make_aggregator,
                                                              caplog):
    """The failed announcement stays retained; an agent that took no part in that run
    waits for the next one instead of exiting."""
    caplog.set_level(logging.INFO)
    with pytest.raises(RoundFailed):
        make_aggregator(broker_port, rounds=1, quorum=2, min_agents=1, round_timeout=0.5,
                        max_extensions=0, start_timeout=0.5).run()
    late = EdgeAgent(agent_config(broker_port, "agent-9"), data=local_data(9, 40))
    thread = threading.Thread(target=late.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: lines(caplog, "fedmq.edge_agent.agent", "an earlier run failed"),
                   "the late agent's line")
        assert thread.is_alive() and late.run_failed is None
    finally:
        late.stop()
        thread.join(5)
