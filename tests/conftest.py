"""Shared fixtures: a real embedded broker on a free loopback port, small keys, small fleets."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import AGGREGATOR_SIGNER, SPEC, EnrolledFleet, agent_config, local_data
from trustee_support import (
    TRUSTEES_ON,
    RunningTrustees,
    ThresholdKey,
    make_threshold_key,
    start_trustees,
)

from fedmq.aggregator.config import AggregatorConfig, RoundPolicy
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.service import Aggregator
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import PaillierPrivateKey, PaillierPublicKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings


@pytest.fixture(scope="session")
def threshold_key() -> ThresholdKey:
    return make_threshold_key()


@pytest.fixture(scope="session")
def keypair(threshold_key: ThresholdKey) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """A 512-bit key from safe primes: the whole key, and the trustees' shares of it."""
    return threshold_key.private.public_key, threshold_key.private


@pytest.fixture
def trustees_on(threshold_key: ThresholdKey, tmp_path: Path
                ) -> Iterator[Callable[..., RunningTrustees]]:
    """Start trustees on a broker port (the key's shares); all stopped at teardown."""
    started: dict[int, RunningTrustees] = {}

    def start(port: int, *, relays: Mapping[str, Ed25519PublicKey] | None = None
              ) -> RunningTrustees:
        """One set of trustees per broker (their client ids are their names); asked again
        for the same broker, the running ones enroll ``relays`` too."""
        if port in started:
            started[port].enroll_relays(relays or {})
            return started[port]
        started[port] = start_trustees(threshold_key, port, tmp_path / f"trustees-{port}",
                                       relays=relays)
        return started[port]

    yield start
    for running in started.values():
        running.stop()


@pytest.fixture
def broker_port() -> Iterator[int]:
    port = free_port()
    with EmbeddedBroker(BrokerSettings(port=port)):
        yield port


@pytest.fixture
def make_aggregator(tmp_path: Path, keypair: Any,
                    trustees_on: Callable[..., RunningTrustees]) -> Callable[..., Aggregator]:
    def make(port: int, codec: CodecParams | None = None, *, spec: ModelSpec = SPEC,
             on_round: Callable[[RoundResult], None] | None = None,
             config: dict[str, Any] | None = None,
             tap: Callable[[str, bytes], object] | None = None, **policy: Any) -> Aggregator:
        """``config``: more AggregatorConfig fields; ``policy``: RoundPolicy fields;
        ``tap``: sees what the aggregator publishes (its own metrics endpoint)."""
        settings = AggregatorConfig(
            codec=codec or CodecParams(),
            topics=Topics("test"), spec=spec, mqtt=MqttSettings(port=port),
            policy=RoundPolicy(**{"rounds": 2, "round_timeout": 10.0, "quorum": 1,
                                  "min_agents": 1, "start_timeout": 20.0, **policy}),
            state_dir=str(tmp_path / "aggregator"), **{
                "training": TrainingSettings(epochs=2, batch_size=8, learning_rate=0.1),
                **(config or {})},
        )
        if TRUSTEES_ON:  # FEDMQ_TEST_TRUSTEES=1: no private key here, trustees decrypt
            running = trustees_on(port)
            settings = replace(settings, trustees_file=str(running.path))
            return Aggregator(settings, keypair=(keypair[0], None), signer=AGGREGATOR_SIGNER,
                              allow_list=EnrolledFleet(), on_round=on_round, tap=tap)
        return Aggregator(settings, keypair=keypair, signer=AGGREGATOR_SIGNER,
                          allow_list=EnrolledFleet(), on_round=on_round, tap=tap)
    return make


@pytest.fixture
def start_agents() -> Iterator[Callable[..., list[EdgeAgent]]]:
    """Start in-process agents on threads; stop them all at teardown."""
    started: list[tuple[EdgeAgent, threading.Thread]] = []

    def start(port: int, n: int, *, first_seed: int = 0,
              options: dict[str, dict[str, Any]] | None = None) -> list[EdgeAgent]:
        """Agents agent-<first_seed>..; ``options`` adds config options per agent id."""
        agents = []
        for i in range(n):
            agent_id = f"agent-{first_seed + i}"
            agent = EdgeAgent(agent_config(port, agent_id, **(options or {}).get(agent_id, {})),
                              data=local_data(first_seed + i, 40 + 15 * i))
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            started.append((agent, thread))
            agents.append(agent)
        return agents

    yield start
    for agent, thread in started:
        agent.stop()
        thread.join(5)


@pytest.fixture
def run_agents() -> Iterator[Callable[..., list[EdgeAgent]]]:
    """Run the given (in-process) agents on threads; stop them all at teardown."""
    started: list[tuple[EdgeAgent, threading.Thread]] = []

    def run(*agents: EdgeAgent) -> list[EdgeAgent]:
        for agent in agents:
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            started.append((agent, thread))
        return list(agents)

    yield run
    for agent, thread in started:
        agent.stop()
        thread.join(5)
