"""Fault injection with real processes on 127.0.0.1: agents, aggregator and broker die.

Each test checks that the run completes, that no accepted update is lost, and
that model versions only increase.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from support import (
    AGGREGATOR_SIGNER,
    agent_process,
    fedmq_process,
    run_in_thread,
    signer_for,
    spec_toml,
    wait_until,
)

from fedmq.aggregator.allowlist import enroll
from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.broker.embedded import free_port
from fedmq.models import load_model
from fedmq.protocol.crypto.paillier import private_key_to_dict

pytestmark = pytest.mark.slow
def test_killing_30_percent_of_agents_mid_round(tmp_path, broker_port, make_aggregator,
                                                start_agents):
    """10 agents; 3 are real processes SIGKILLed inside round 1 (no DISCONNECT)."""
    survivors = start_agents(broker_port, 7)
    victims = [agent_process(tmp_path, broker_port, f"agent-{i}", i, straggle=60)
               for i in range(7, 10)]
    try:
        aggregator = make_aggregator(broker_port, rounds=3, quorum=7, min_agents=10,
                                     round_timeout=3.0, start_timeout=60.0)
        thread, out = run_in_thread(aggregator.run)
        wait_until(lambda: len(aggregator.results) == 0 and bool(aggregator.checkpoints.load())
                   and aggregator.checkpoints.load().status == "open", "round 1 to open",
                   timeout=60)
        wait_until(lambda: len(aggregator.checkpoints.load_updates()) == 7,
                   "the 7 survivors' updates", timeout=30)
        for proc in victims:
            assert proc.poll() is None, "a victim died before the fault was injected"
            proc.send_signal(signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive() and "error" not in out, out.get("error")
    finally:
        for proc in victims:
            if proc.poll() is None:
                proc.kill()
    first, *rest = aggregator.results
    assert first.expected == 10 and first.closed_by == "deadline"
    assert sorted(first.reported) == sorted(a.config.agent_id for a in survivors)
    for result in rest:  # the Last Wills told the aggregator; nobody waits for the dead
        assert result.expected == 7 and result.closed_by == "all" and len(result.reported) == 7
    assert [r.model_version for r in aggregator.results] == [1, 2, 3]


def _aggregator_config(tmp_path: Path, port: int, keypair, ids: list[str]) -> Path:
    state = tmp_path / "gateway"
    state.mkdir()
    _, priv = keypair
    import json

    (state / "paillier.key").write_text(json.dumps(private_key_to_dict(priv)))
    (state / "paillier.key").chmod(0o600)
    (state / "signing.key").write_bytes(AGGREGATOR_SIGNER.to_pem())  # as enroll left it
    (state / "signing.key").chmod(0o600)
    for agent_id in ids:
        enroll(state / "allow.json", agent_id, signer_for(agent_id).public_hex)
    config = tmp_path / "aggregator.toml"
    config.write_text(f"""
[fleet]
name = "test"
[mqtt]
port = {port}
[keys]
private_key_file = "{state / 'paillier.key'}"
bits = 512
signing_key_file = "{state / 'signing.key'}"
allow_list_file = "{state / 'allow.json'}"
[rounds]
rounds = 3
round_timeout = 15
quorum = 3
min_agents = 3
start_timeout = 60
max_extensions = 0
{spec_toml()}[training]
epochs = 2
batch_size = 8
learning_rate = 0.1
[output]
state_dir = "{state}"
""".replace("'", '"'))
    return config


def _rounds_log(tmp_path: Path) -> list[dict[str, str]]:
    """The training rounds' rows; the run ends with its final evaluation's row."""
    with (tmp_path / "gateway" / "latest" / "rounds.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["phase"] == "evaluation"
    return [r for r in rows if r["phase"] == "training"]


def test_aggregator_killed_and_restarted_mid_round_loses_nothing(tmp_path, broker_port, keypair,
                                                                 start_agents):
    ids = ["agent-0", "agent-1", "agent-2"]
    config = _aggregator_config(tmp_path, broker_port, keypair, ids)
    agents = start_agents(broker_port, 3, options={"agent-2": {"straggle_seconds": 3.0}})
    log = tmp_path / "aggregator.log"
    first = fedmq_process("aggregator", "--config", str(config), log=log)
    durable = Checkpoints(tmp_path / "gateway" / "latest")
    try:
        wait_until(lambda: len(durable.load_updates()) == 2,
                   "two accepted updates on disk", timeout=60)
        accepted_before = sorted(agent for agent, _ in durable.load_updates())
        first.send_signal(signal.SIGKILL)  # the gateway loses power inside round 1
        first.wait(10)
        time.sleep(3.5)  # agent-2 finishes and publishes while no aggregator runs
        second = fedmq_process("aggregator", "--config", str(config), log=log)
        assert second.wait(90) == 0, log.read_text()[-3000:]
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    rows = _rounds_log(tmp_path)
    assert [r["round"] for r in rows] == ["1", "2", "3"]  # none lost, none reopened
    assert [int(r["model_version"]) for r in rows] == [1, 2, 3]
    assert set(accepted_before) <= set(rows[0]["agents"].split())
    assert sorted(rows[0]["agents"].split()) == ids  # the straggler's update was not lost
    assert "resuming run" in log.read_text()
    _, params, meta = load_model(tmp_path / "gateway" / "latest" / "global_model.npz")
    assert meta["model_version"] == 3
    wait_until(lambda: all(a.final_params is not None for a in agents), "final model", timeout=10)
    for agent in agents:
        np.testing.assert_array_equal(agent.final_params, params)


def test_broker_stopped_and_restarted_mid_run(tmp_path, make_aggregator, start_agents):
    port = free_port()
    broker_cfg = tmp_path / "broker.toml"
    broker_cfg.write_text(f'[broker]\nhost = "127.0.0.1"\nport = {port}\n')
    log = tmp_path / "broker.log"
    broker = fedmq_process("broker", "--config", str(broker_cfg), log=log)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: _listening(port), "the broker", timeout=30)
        ids = ["agent-0", "agent-1", "agent-2"]
        start_agents(port, 3, options={"agent-2": {"straggle_seconds": 2.0}})
        aggregator = make_aggregator(port, rounds=3, quorum=3, min_agents=3,
                                     round_timeout=20.0)
        thread, out = run_in_thread(aggregator.run)
        wait_until(lambda: len(aggregator.checkpoints.load_updates()) == 2,
                   "two accepted updates", timeout=60)
        broker.send_signal(signal.SIGKILL)  # the gateway's broker dies inside round 1
        broker.wait(10)
        time.sleep(2.5)  # agent-2 publishes into the void; paho keeps it queued
        restarted = fedmq_process("broker", "--config", str(broker_cfg), log=log)
        wait_until(lambda: _listening(port), "the restarted broker", timeout=30)
        # Clients retry with exponential backoff (1, 2, 4, ... 30 s): allow for it.
        thread.join(150)
        assert not thread.is_alive() and "error" not in out, out.get("error")
    finally:
        for proc in (broker, restarted):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    assert [r.round_id for r in aggregator.results] == [1, 2, 3]
    assert [r.model_version for r in aggregator.results] == [1, 2, 3]
    for result in aggregator.results:
        assert sorted(result.reported) == ids  # every update arrived, none twice


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0



def test_agent_process_restarted_mid_round_resumes_in_the_current_round(
        tmp_path, broker_port, make_aggregator, start_agents):
    start_agents(broker_port, 2)
    first = agent_process(tmp_path, broker_port, "agent-9", 9, straggle=60)
    second: subprocess.Popen[bytes] | None = None
    try:
        aggregator = make_aggregator(broker_port, rounds=2, quorum=3, min_agents=3,
                                     round_timeout=30.0, start_timeout=60.0)
        thread, out = run_in_thread(aggregator.run)
        wait_until(lambda: len(aggregator.checkpoints.load_updates()) == 2,
                   "the two thread agents' updates", timeout=60)
        first.send_signal(signal.SIGKILL)  # power cut while it trains
        first.wait(10)
        second = agent_process(tmp_path, broker_port, "agent-9", 9, straggle=0)
        thread.join(60)
        assert not thread.is_alive() and "error" not in out, out.get("error")
        assert second.wait(20) == 0  # it served round 2 and exited on "finished"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    for result in aggregator.results:
        assert sorted(result.reported) == ["agent-0", "agent-1", "agent-9"]
        assert result.closed_by == "all"


class _PowerCut(BaseException):
    """The gateway dies: nothing after the point where this is raised runs."""


def test_aggregator_restarted_at_a_round_boundary_waits_for_the_agents(
        tmp_path, broker_port, keypair, start_agents):
    """Killed right after round 1 closed (before round 2 opened): the restarted aggregator
    must not open round 2 "expecting 0 agents" and sit out its deadline."""
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.aggregator.service import Aggregator

    ids = ["agent-0", "agent-1", "agent-2"]
    config = _aggregator_config(tmp_path, broker_port, keypair, ids)
    start_agents(broker_port, 3)

    def power_cut(_result: object) -> None:
        raise _PowerCut  # after round 1's model, checkpoint and audit row, before round 2

    first = Aggregator(AggregatorConfig.from_file(config), on_round=power_cut)
    thread, out = run_in_thread(first.run)
    thread.join(60)
    assert isinstance(out.get("error"), _PowerCut), out
    assert first.checkpoints.load().status == "closed"
    log = tmp_path / "aggregator.log"
    second = fedmq_process("aggregator", "--config", str(config), log=log)
    try:
        assert second.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    rows = _rounds_log(tmp_path)
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert "expecting 0 agents" not in log.read_text()
    for row in rows[1:]:  # round_timeout is 15 s: "all" well before it
        assert row["closed_by"] == "all" and int(row["expected"]) == 3, row
        assert float(row["seconds"]) < 7.5, row


def test_a_server_optimizer_killed_mid_run_resumes_its_state(tmp_path, broker_port, keypair,
                                                             start_agents):
    """Issue 21: the fedadam state that produced the saved model survives a power loss
    inside round 2 (its exact continuation is tests/aggregator/test_optstate.py)."""
    ids = ["agent-0", "agent-1", "agent-2"]
    config = _aggregator_config(tmp_path, broker_port, keypair, ids)
    config.write_text(config.read_text() + '[server]\noptimizer = "fedadam"\nserver_lr = 0.1\n')
    agents = start_agents(broker_port, 3, options={"agent-2": {"straggle_seconds": 3.0}})
    log = tmp_path / "aggregator.log"
    first = fedmq_process("aggregator", "--config", str(config), log=log)
    durable = Checkpoints(tmp_path / "gateway" / "latest")

    def inside_round_2() -> bool:
        cp = durable.load()
        return cp is not None and cp.round_id == 2 and len(durable.load_updates()) == 2
    try:
        wait_until(inside_round_2, "round 2 with two accepted updates on disk", timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = fedmq_process("aggregator", "--config", str(config), log=log)
        assert second.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    text = log.read_text()
    assert "resuming run" in text and "server optimizer fedadam" in text
    assert "fresh moments" not in text
    rows = _rounds_log(tmp_path)
    assert [int(r["model_version"]) for r in rows] == [1, 2, 3]
    saved = json.loads((tmp_path / "gateway" / "latest" / "server_opt.json").read_text())
    assert saved["optimizer"] == "fedadam" and sorted(saved["states"]) == ["2", "3"]
    assert saved["states"]["3"]["t"] == 3  # one step a round, the resumed one included
    _, params, _ = load_model(tmp_path / "gateway" / "latest" / "global_model.npz")
    wait_until(lambda: all(a.final_params is not None for a in agents), "final model", timeout=10)
    for agent in agents:
        np.testing.assert_array_equal(agent.final_params, params)
        assert agent.server is not None and agent.server.optimizer == "fedadam"
