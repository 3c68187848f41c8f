"""The agent's own privacy limits against a real aggregator on an embedded broker."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from mqtt_support import Probe
from support import AGGREGATOR_SIGNER, SPEC, EnrolledFleet, agent_config, local_data, wait_until

from fedmq.aggregator.privacy import privacy_terms
from fedmq.aggregator.schema import PrivacyTable
from fedmq.aggregator.service import Aggregator
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.ledger import LEDGER_FILE
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.messages import StatusMessage
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.topics import Topics

pytestmark = pytest.mark.slow

TOPICS = Topics("test")


def _terms(quorum: int, epsilon: float, rounds: int = 2) -> PrivacyTerms:
    return privacy_terms(PrivacyTable(epsilon=epsilon, clip=1.0), spec=SPEC, rounds=rounds,
                         quorum=quorum, codec=CodecParams())


def _agents(port: int, tmp_path: Path, keypair: Any,
            limits: dict[str, dict[str, Any]]) -> list[EdgeAgent]:
    """Agents with the aggregator's keys pinned (no first-use warning), and ``limits``."""
    pins = {"key_fingerprint": fingerprint(keypair[0]),
            "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
    return [EdgeAgent(agent_config(port, name, state_dir=str(tmp_path / name), **pins,
                                   **extra), data=local_data(i, 60 + 10 * i))
            for i, (name, extra) in enumerate(limits.items())]


def _agent_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("fedmq.edge_agent") and r.levelno >= level]


def test_devices_refuse_a_gateway_announcing_a_quorum_above_their_cap(
        broker_port: int, make_aggregator: Any, keypair: Any, run_agents: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A curious gateway sizes the noise for 1000 devices while 2 close its rounds: each
    share is 1/sqrt(1000) of the noise, so the decrypted sums are nearly noise-free. The
    devices capped at 8 send nothing (no noise share, no update, no ledger charge), say
    so once in their log and publish a privacy-budget skip for every round; the two with
    an old agent.toml (no cap) still trust it, which is what the cap is for."""
    caplog.set_level(logging.INFO)
    honest = make_aggregator(broker_port, rounds=2, quorum=2, min_agents=4,
                             round_timeout=3.0, max_extensions=0,
                             config={"privacy": _terms(2, epsilon=30.0)}).config
    # AggregatorConfig refuses noise sized for more devices than the quorum: bypassed.
    curious = dataclasses.replace(honest)
    object.__setattr__(curious, "privacy", _terms(1000, epsilon=30.0))
    aggregator = Aggregator(curious, keypair=keypair, signer=AGGREGATOR_SIGNER,
                            allow_list=EnrolledFleet())
    capped = ("agent-2", "agent-3")
    watcher = Probe(broker_port, "watcher")
    assert watcher.connect()
    for name in capped:
        assert watcher.subscribe(TOPICS.update(name)) and watcher.subscribe(TOPICS.status(name))
    try:
        run_agents(*_agents(broker_port, tmp_path, keypair, {
            "agent-0": {}, "agent-1": {},
            **{name: {"max_quorum": 8, "max_epsilon": 10.0} for name in capped}}))
        aggregator.run()
        for name in capped:
            wait_until(lambda name=name: any(
                (s := StatusMessage.from_bytes(p)).skipped and s.skipped.round_id == 2
                for p in watcher.got(TOPICS.status(name))), f"{name}'s skip of round 2")
    finally:
        watcher.close()
    assert [sorted(r.reported) for r in aggregator.results] == [["agent-0", "agent-1"]] * 2
    assert [r.skipped for r in aggregator.results] == [{"privacy-budget": 2}] * 2
    warnings = _agent_lines(caplog, logging.WARNING)
    for name in capped:
        assert not watcher.got(TOPICS.update(name))  # nothing left the device
        assert not (tmp_path / name / LEDGER_FILE).exists()  # nothing charged
        skips = [s.skipped for p in watcher.got(TOPICS.status(name))
                 if (s := StatusMessage.from_bytes(p)).skipped]
        assert {(s.round_id, s.code) for s in skips} == {(1, "privacy-budget"),
                                                         (2, "privacy-budget")}
        assert all(s.detail == "announced DP quorum 1000 is above this device's max_quorum 8"
                   for s in skips)
    # One line per refusing device for the whole run, not one per round.
    assert len(warnings) == 2 and all(w.startswith("round 1 skipped (privacy-budget): the "
                                                   "gateway sizes the device-level DP noise "
                                                   "for a quorum of 1000 devices")
                                      for w in warnings)
    assert (tmp_path / "agent-0" / LEDGER_FILE).exists()  # uncapped: served, and charged


def test_devices_serve_a_gateway_within_their_caps_and_log_no_warning(
        broker_port: int, make_aggregator: Any, keypair: Any, run_agents: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    aggregator = make_aggregator(broker_port, rounds=2, quorum=3, min_agents=3,
                                 round_timeout=20.0, config={"privacy": _terms(3, epsilon=8.0)})
    names = ("agent-0", "agent-1", "agent-2")
    agents = run_agents(*_agents(broker_port, tmp_path, keypair, {
        name: {"max_quorum": 6, "max_epsilon": 10.0} for name in names}))
    aggregator.run()
    assert [sorted(r.reported) for r in aggregator.results] == [list(names)] * 2
    assert all(not r.skipped for r in aggregator.results)
    for agent in agents:
        assert sorted(agent.history) == [1, 2]
        assert (tmp_path / agent.config.agent_id / LEDGER_FILE).exists()
    assert _agent_lines(caplog, logging.WARNING) == []
