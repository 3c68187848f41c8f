"""Fault injection with real processes on 127.0.0.1: agents, aggregator and broker die.

Each test checks that the run completes, that no accepted update is lost, and
that model versions only increase.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from support import FEATURES, SPEC, agent_config, local_data, run_in_thread, signer_for

from aggregator.allowlist import enroll
from broker.embedded import free_port
from edge_agent.agent import EdgeAgent
from models import load_model
from protocol.paillier import private_key_to_dict

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def fedmq(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fedmq", *args], env=ENV,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def agent_process(tmp_path: Path, port: int, agent_id: str, seed: int,
                  straggle: float) -> subprocess.Popen[bytes]:
    data = local_data(seed, 60)
    csv_path = tmp_path / f"{agent_id}.csv"
    np.savetxt(csv_path, np.column_stack([data.X, data.y]), delimiter=",",
               header=",".join((*FEATURES, "y")), comments="")
    key_file = tmp_path / f"{agent_id}.key"
    key_file.write_bytes(signer_for(agent_id).to_pem())
    config = tmp_path / f"{agent_id}.toml"
    config.write_text(f"""
[agent]
id = "{agent_id}"
signing_key_file = "{key_file}"
[fleet]
name = "test"
[mqtt]
port = {port}
[data]
path = "{csv_path}"
features = {list(FEATURES)!r}
label = "y"
[simulation]
straggle_seconds = {straggle}
""".replace("'", '"'))
    return fedmq("agent", "--config", str(config), log=tmp_path / f"{agent_id}.log")


@pytest.fixture
def agents_on_threads() -> Iterator[Callable[..., list[EdgeAgent]]]:
    started: list[tuple[EdgeAgent, threading.Thread]] = []

    def start(port: int, ids: list[str], **extra: object) -> list[EdgeAgent]:
        out = []
        for i, agent_id in enumerate(ids):
            cfg = agent_config(port, agent_id, **extra.get(agent_id, {}))  # type: ignore[arg-type]
            agent = EdgeAgent(cfg, data=local_data(i, 40 + 10 * i))
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            started.append((agent, thread))
            out.append(agent)
        return out

    yield start
    for agent, thread in started:
        agent.stop()
        thread.join(5)


def test_killing_30_percent_of_agents_mid_round(tmp_path, broker_port, make_aggregator,
                                                agents_on_threads):
    """10 agents; 3 are real processes SIGKILLed inside round 1 (no DISCONNECT)."""
    survivors = agents_on_threads(broker_port, [f"agent-{i}" for i in range(7)])
    victims = [agent_process(tmp_path, broker_port, f"agent-{i}", i, straggle=60)
               for i in range(7, 10)]
    try:
        aggregator = make_aggregator(broker_port, rounds=3, quorum=7, min_agents=10,
                                     round_timeout=3.0, start_timeout=60.0)
        thread, out = run_in_thread(aggregator.run)
        wait_for(lambda: len(aggregator.results) == 0 and bool(aggregator.checkpoints.load())
                 and aggregator.checkpoints.load().status == "open", 60, "round 1 to open")
        wait_for(lambda: len(aggregator.checkpoints.load_updates()) == 7, 30,
                 "the 7 survivors' updates")
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
    for agent_id in ids:
        enroll(state / "allow.json", agent_id, signer_for(agent_id).public_hex)
    spec = SPEC.to_dict()
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
[model]
kind = "{spec['kind']}"
features = {list(spec['features'])!r}
n_classes = {spec['n_classes']}
center = {list(spec['center'])!r}
scale = {list(spec['scale'])!r}
[training]
epochs = 2
batch_size = 8
learning_rate = 0.1
[output]
state_dir = "{state}"
""".replace("'", '"'))
    return config


def _rounds_log(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "gateway" / "rounds.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_aggregator_killed_and_restarted_mid_round_loses_nothing(tmp_path, broker_port, keypair,
                                                                 agents_on_threads):
    ids = ["agent-0", "agent-1", "agent-2"]
    config = _aggregator_config(tmp_path, broker_port, keypair, ids)
    agents = agents_on_threads(broker_port, ids, **{"agent-2": {"straggle_seconds": 3.0}})
    log = tmp_path / "aggregator.log"
    first = fedmq("aggregator", "--config", str(config), log=log)
    open_round = tmp_path / "gateway" / "open_round"
    try:
        wait_for(lambda: len(list(open_round.glob("*.fmqu"))) == 2, 60,
                 "two accepted updates on disk")
        accepted_before = sorted(p.stem for p in open_round.glob("*.fmqu"))
        first.send_signal(signal.SIGKILL)  # the gateway loses power inside round 1
        first.wait(10)
        time.sleep(3.5)  # agent-2 finishes and publishes while no aggregator runs
        second = fedmq("aggregator", "--config", str(config), log=log)
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
    _, params, meta = load_model(tmp_path / "gateway" / "global_model.npz")
    assert meta["model_version"] == 3
    wait_for(lambda: all(a.final_params is not None for a in agents), 10, "final model")
    for agent in agents:
        np.testing.assert_array_equal(agent.final_params, params)


def test_broker_stopped_and_restarted_mid_run(tmp_path, make_aggregator, agents_on_threads):
    port = free_port()
    broker_cfg = tmp_path / "broker.toml"
    broker_cfg.write_text(f'[broker]\nhost = "127.0.0.1"\nport = {port}\n')
    log = tmp_path / "broker.log"
    broker = fedmq("broker", "--config", str(broker_cfg), log=log)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: _listening(port), 30, "the broker")
        ids = ["agent-0", "agent-1", "agent-2"]
        agents_on_threads(port, ids, **{"agent-2": {"straggle_seconds": 2.0}})
        aggregator = make_aggregator(port, rounds=3, quorum=3, min_agents=3,
                                     round_timeout=20.0)
        thread, out = run_in_thread(aggregator.run)
        wait_for(lambda: len(aggregator.checkpoints.load_updates()) == 2, 60,
                 "two accepted updates")
        broker.send_signal(signal.SIGKILL)  # the gateway's broker dies inside round 1
        broker.wait(10)
        time.sleep(2.5)  # agent-2 publishes into the void; paho keeps it queued
        restarted = fedmq("broker", "--config", str(broker_cfg), log=log)
        wait_for(lambda: _listening(port), 30, "the restarted broker")
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
        tmp_path, broker_port, make_aggregator, agents_on_threads):
    agents_on_threads(broker_port, ["agent-0", "agent-1"])
    first = agent_process(tmp_path, broker_port, "agent-9", 9, straggle=60)
    second: subprocess.Popen[bytes] | None = None
    try:
        aggregator = make_aggregator(broker_port, rounds=2, quorum=3, min_agents=3,
                                     round_timeout=30.0, start_timeout=60.0)
        thread, out = run_in_thread(aggregator.run)
        wait_for(lambda: len(aggregator.checkpoints.load_updates()) == 2, 60,
                 "the two thread agents' updates")
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
