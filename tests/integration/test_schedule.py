"""A gateway that keeps learning ([schedule]): real broker, real agents on 127.0.0.1.

Runs back to back, each warm-started from the last one's final model, each in its own
run directory with its own audit rows; agents stay connected between runs; the rows
trigger; a restart between runs keeps the schedule and never re-runs a finished run.
"""

from __future__ import annotations

import csv
import json
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from support import (
    AGGREGATOR_SIGNER,
    agent_config,
    agent_process,
    fedmq_process,
    local_data,
    run_in_thread,
    signer_for,
    spec_toml,
    wait_until,
)

from fedmq.aggregator.allowlist import enroll
from fedmq.aggregator.schedule import Schedule
from fedmq.edge_agent import readiness
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.paillier import private_key_to_dict
from fedmq.protocol.messages import RoundMessage

pytestmark = pytest.mark.slow


class RoundTap:
    """Every round announcement the aggregator publishes, parsed."""

    def __init__(self) -> None:
        self.seen: list[RoundMessage] = []
        self._lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/round"):
            with self._lock:
                self.seen.append(RoundMessage.from_bytes(payload))

    def finished(self) -> dict[str, RoundMessage]:
        """Run id -> its (last) finished announcement, in the order runs finished."""
        with self._lock:
            return {m.run_id: m for m in self.seen if m.state == "finished"}

    def first_training(self, run_id: str) -> RoundMessage:
        with self._lock:
            return next(m for m in self.seen if m.run_id == run_id and m.state == "training"
                        and m.round_id == 1)

    def runs(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(m.run_id for m in self.seen if m.state == "training"))


def _audit_runs(run_dir: Path) -> set[str]:
    with (run_dir / "rounds.csv").open() as f:
        return {row["run_id"] for row in csv.DictReader(f)}


def _count_connects(agent: EdgeAgent) -> list[int]:
    """Count the agent's (re)connects from now on (each says "online" on connect)."""
    calls = [0]
    online = agent._status.online

    def counted() -> None:
        calls[0] += 1
        online()
    agent._status.online = counted  # type: ignore[method-assign]
    return calls


def test_runs_back_to_back_warm_started_agents_stay(tmp_path, broker_port, make_aggregator,
                                                    start_agents):
    agents = start_agents(broker_port, 3)  # exit_when_finished = true, as by default
    wait_until(lambda: all(a._link.connected for a in agents), "agents to connect")
    connects = [_count_connects(a) for a in agents]
    tap = RoundTap()
    aggregator = make_aggregator(broker_port, rounds=2, quorum=3, min_agents=3, tap=tap,
                                 config={"schedule": Schedule(every=1.0, check_seconds=0.2)})
    thread, out = run_in_thread(aggregator.run)
    wait_until(lambda: len(tap.finished()) >= 2, "two runs to finish", timeout=90)
    aggregator.stop()
    thread.join(30)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    first, second = list(tap.finished())[:2]
    done = tap.finished()[first]
    assert done.continues and done.next_run_at > 0
    # The second run starts from the first run's final model, exactly.
    start = tap.first_training(second)
    assert start.params == done.params and any(start.params)
    assert start.model_version == 0
    runs = aggregator.runs.root
    for run_id in (first, second):
        assert _audit_runs(runs / run_id) == {run_id}
    assert (runs / second / "warm_start.npz").exists()
    assert not (runs / first / "warm_start.npz").exists()
    # The agents neither exited at "finished" nor reconnected between the runs.
    assert all(a._link.connected for a in agents)
    assert [c[0] for c in connects] == [0, 0, 0]
    served = {a.config.agent_id: a._memory.run_id for a in agents}
    assert set(served.values()) <= set(tap.runs()) and second in tap.runs()


def test_restart_between_runs_keeps_the_schedule(tmp_path, broker_port, make_aggregator,
                                                 start_agents):
    start_agents(broker_port, 2)
    tap = RoundTap()
    hourly = {"schedule": Schedule(every=3600.0, check_seconds=0.2)}
    first = make_aggregator(broker_port, rounds=1, quorum=2, min_agents=2, tap=tap,
                            config=hourly)
    thread, out = run_in_thread(first.run)
    wait_until(lambda: tap.finished(), "the first run to finish", timeout=60)
    [run_id] = tap.finished()
    due = tap.finished()[run_id].next_run_at
    time.sleep(0.5)
    first.stop()  # as systemd restarting the gateway (or kill -9: nothing is written here)
    thread.join(20)
    assert first.ended == "between runs" and "error" not in out, out.get("error")
    rows_before = (first.runs.root / run_id / "rounds.csv").read_bytes()

    tap.seen.clear()
    again = make_aggregator(broker_port, rounds=1, quorum=2, min_agents=2, tap=tap,
                            config=hourly)
    thread, out = run_in_thread(again.run)
    # It announces the finished run again with the same due time, and starts nothing.
    wait_until(lambda: tap.finished(), "the finished run announced again")
    assert tap.finished()[run_id].next_run_at == due
    time.sleep(1.0)
    assert tap.runs() == [] and sorted(p.name for p in again.runs.root.iterdir()) == [run_id]
    again.stop()
    thread.join(20)
    assert again.ended == "between runs" and "error" not in out, out.get("error")

    # Restarted once more with a schedule that makes the next run due now: one new run,
    # warm-started; the finished run is never run again.
    tap.seen.clear()
    soon = make_aggregator(broker_port, rounds=1, quorum=2, min_agents=2, tap=tap,
                           config={"schedule": Schedule(every=1.0, check_seconds=0.2)})
    thread, out = run_in_thread(soon.run)
    wait_until(lambda: [r for r in tap.finished() if r != run_id], "the next run", timeout=60)
    soon.stop()
    thread.join(30)
    assert "error" not in out, out.get("error")
    new = [r for r in tap.runs() if r != run_id]
    assert run_id not in tap.runs() and len(new) >= 1
    assert (soon.runs.root / run_id / "rounds.csv").read_bytes() == rows_before
    assert (soon.runs.root / new[0] / "warm_start.npz").exists()


def _write_rows(path: Path, seed: int, n: int, *, header: bool) -> None:
    data = local_data(seed, n)
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow([*data.features, data.label])
        for x, y in zip(data.X, data.y, strict=True):
            w.writerow([*(f"{v:.6f}" for v in x), int(y)])


def test_new_rows_start_the_next_run(tmp_path, broker_port, make_aggregator, run_agents,
                                     monkeypatch):
    monkeypatch.setattr(readiness, "CHECK_SECONDS", 0.2)
    agents = []
    for i in range(2):
        path = tmp_path / f"agent-{i}.csv"
        _write_rows(path, i, 40, header=True)
        config = replace(agent_config(broker_port, f"agent-{i}"), data_path=str(path),
                         state_dir=str(tmp_path / f"agent-{i}"))
        agents.append(EdgeAgent(config))
    run_agents(*agents)
    tap = RoundTap()
    aggregator = make_aggregator(broker_port, rounds=1, quorum=2, min_agents=2, tap=tap,
                                 config={"schedule": Schedule(min_new_rows=5, ready_devices=2,
                                                              check_seconds=0.2)})
    thread, out = run_in_thread(aggregator.run)
    try:
        wait_until(lambda: tap.finished(), "the first run to finish", timeout=60)
        [run_id] = tap.finished()
        assert tap.finished()[run_id].ready_rows == 5
        assert tap.finished()[run_id].next_run_at == 0.0  # no timer
        _write_rows(tmp_path / "agent-0.csv", 10, 5, header=False)
        wait_until(lambda: aggregator._inbound.ready.get("agent-0") == run_id,
                   "agent-0 to say it is ready")
        time.sleep(1.0)  # one ready device of the two needed: no run
        assert tap.runs() == [run_id]
        _write_rows(tmp_path / "agent-1.csv", 11, 4, header=False)
        time.sleep(1.0)  # four rows of five: still not ready
        assert aggregator._inbound.ready.get("agent-1") == "" and tap.runs() == [run_id]
        _write_rows(tmp_path / "agent-1.csv", 12, 1, header=False)
        wait_until(lambda: len(tap.finished()) == 2, "the second run", timeout=30)
        # The device's baseline survives its restart (rows_since.json in its state_dir).
        assert (tmp_path / "agent-1" / "rows_since.json").exists()
    finally:
        aggregator.stop()
        thread.join(30)
    assert "error" not in out, out.get("error")


def _gateway_config(tmp_path: Path, port: int, keypair, ids: list[str], every: str) -> Path:
    state = tmp_path / "gateway"
    state.mkdir()
    (state / "paillier.key").write_text(json.dumps(private_key_to_dict(keypair[1])))
    (state / "paillier.key").chmod(0o600)
    (state / "signing.key").write_bytes(AGGREGATOR_SIGNER.to_pem())
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
rounds = 1
round_timeout = 15
quorum = 2
min_agents = 2
start_timeout = 60
{spec_toml()}[output]
state_dir = "{state}"
[schedule]
every = "{every}"
check_seconds = 0.5
""".replace("'", '"'))
    return config


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_bytes())["status"]
    except (OSError, ValueError, KeyError):
        return None


def test_kill_9_between_runs_keeps_the_schedule_with_real_processes(tmp_path, broker_port,
                                                                   keypair):
    """Real agent processes (exit_when_finished = true) and a real aggregator process,
    SIGKILLed right after its first run finished: the restarted one waits for the due
    time, runs the next run once, and exits 0 on SIGTERM between runs."""
    ids = ["agent-0", "agent-1"]
    # 15 s: the second run (started 15 s after the first) must end before a third is due,
    # even on a loaded machine, for SIGTERM to find the gateway between runs.
    config = _gateway_config(tmp_path, broker_port, keypair, ids, every="15s")
    agents = [agent_process(tmp_path, broker_port, a, i, straggle=0) for i, a in enumerate(ids)]
    log = tmp_path / "aggregator.log"
    runs = tmp_path / "gateway" / "runs"
    first = fedmq_process("aggregator", "--config", str(config), log=log)
    second = None
    try:
        wait_until(lambda: runs.exists() and any(_status(d) == "finished" for d in runs.iterdir()),
                   "the first run to finish", timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        [r1] = [d.name for d in runs.iterdir()]
        schedule = json.loads((tmp_path / "gateway" / "schedule.json").read_bytes())
        assert schedule["run_id"] == r1
        rows_r1 = (runs / r1 / "rounds.csv").read_bytes()
        second = fedmq_process("aggregator", "--config", str(config), log=log)
        wait_until(lambda: any(_status(d) == "finished" for d in runs.iterdir() if d.name != r1),
                   "the second run to finish", timeout=60)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
        assert all(a.poll() is None for a in agents), "an agent exited between runs"
    finally:
        for proc in (first, second, *agents):
            if proc is not None and proc.poll() is None:
                proc.kill()
    names = sorted(d.name for d in runs.iterdir())
    assert len(names) == 2 and names[0] == r1  # one new run, the finished one not again
    assert (runs / r1 / "rounds.csv").read_bytes() == rows_r1
    later = json.loads((tmp_path / "gateway" / "schedule.json").read_bytes())
    assert later["run_id"] == names[1]
    assert later["started_at"] >= schedule["started_at"] + 15.0  # not early
    text = log.read_text()
    assert "next run due at" in text and "stopped between runs" in text
    for agent_id in ids:
        agent_log = (tmp_path / f"{agent_id}.log").read_text()
        assert "staying connected" in agent_log and agent_log.count("connected to ") == 1
