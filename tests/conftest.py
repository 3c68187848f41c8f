"""Shared fixtures: a real embedded broker on a free loopback port, small keys, small fleets."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import AGGREGATOR_SIGNER, SPEC, EnrolledFleet, agent_config, local_data

from fedmq.aggregator.config import AggregatorConfig, RoundPolicy
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.service import Aggregator
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import PaillierPrivateKey, PaillierPublicKey, generate_keypair
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings


@pytest.fixture(scope="session")
def keypair() -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    return generate_keypair(512)


@pytest.fixture
def broker_port() -> Iterator[int]:
    port = free_port()
    with EmbeddedBroker(BrokerSettings(port=port)):
        yield port


@pytest.fixture
def make_aggregator(tmp_path: Path, keypair: Any) -> Callable[..., Aggregator]:
    def make(port: int, codec: CodecParams | None = None, *, spec: ModelSpec = SPEC,
             on_round: Callable[[RoundResult], None] | None = None,
             config: dict[str, Any] | None = None, **policy: Any) -> Aggregator:
        """``config``: more AggregatorConfig fields; ``policy``: RoundPolicy fields."""
        settings = AggregatorConfig(
            codec=codec or CodecParams(),
            topics=Topics("test"), spec=spec, mqtt=MqttSettings(port=port),
            policy=RoundPolicy(**{"rounds": 2, "round_timeout": 10.0, "quorum": 1,
                                  "min_agents": 1, "start_timeout": 20.0, **policy}),
            state_dir=str(tmp_path / "aggregator"), **{
                "training": TrainingSettings(epochs=2, batch_size=8, learning_rate=0.1),
                **(config or {})},
        )
        return Aggregator(settings, keypair=keypair, signer=AGGREGATOR_SIGNER,
                          allow_list=EnrolledFleet(), on_round=on_round)
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
