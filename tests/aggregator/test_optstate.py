"""Real MQTT: a fedadam run stopped and resumed steps exactly as one uninterrupted run would,
and the agents see the signed server settings (aggregator.optstate, through the service)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from support import SPEC, agent_config, local_data

from fedmq.aggregator.optstate import FILE
from fedmq.aggregator.server_opt import ServerState, initial_state, server_step
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.messages import MetricsMessage
from fedmq.protocol.server import ServerSettings

UNSCALED = replace(SPEC, center=None, scale=None)
ADAM = ServerSettings(optimizer="fedadam", server_lr=0.05, tau=1e-2)


def _recording(aggregator: Any, steps: list[tuple[np.ndarray, np.ndarray, int]]) -> None:
    """Keep every (params, avg_delta, version) the aggregator's optimizer is stepped with."""
    step = aggregator._optimizer.step

    def record(params: np.ndarray, avg_delta: np.ndarray, version: int) -> np.ndarray:
        steps.append((params.copy(), avg_delta.copy(), version))
        return step(params, avg_delta, version)
    aggregator._optimizer.step = record


def test_a_fedadam_run_resumed_after_a_stop_steps_bit_for_bit(
        broker_port, make_aggregator, run_agents, caplog):
    caplog.set_level(logging.INFO)
    agents = run_agents(*(EdgeAgent(agent_config(broker_port, f"agent-{i}",
                                                 exit_when_finished=False),
                                    data=local_data(i, 40 + 15 * i)) for i in range(2)))
    steps: list[tuple[np.ndarray, np.ndarray, int]] = []
    # A statistics round first and a final evaluation round last: neither steps it.
    first = make_aggregator(broker_port, spec=UNSCALED, min_agents=2, rounds=4,
                            config={"server": ADAM},
                            on_round=lambda r: r.round_id == 2 and first.stop())
    _recording(first, steps)
    with pytest.raises(Exception, match="stopped"):
        first.run()
    assert "server optimizer fedadam (server_lr 0.05, beta1 0.9, beta2 0.99, tau 0.01)" \
        in caplog.text  # the run's start line
    assert "round 1 open: expecting 2 agents, quorum 1, deadline in" in caplog.text
    assert ", server optimizer fedadam" in caplog.text  # each round's announcement
    published: list[tuple[str, bytes]] = []
    second = make_aggregator(broker_port, spec=UNSCALED, min_agents=2, rounds=4,
                             config={"server": ADAM},
                             tap=lambda topic, payload: published.append((topic, payload)))
    _recording(second, steps)
    final = second.run()
    assert second.store.run_dir == first.store.run_dir
    assert [r.round_id for r in second.results] == [3, 4]
    assert first.statistics is not None and second.final_evaluation is not None
    assert "resuming run" in caplog.text

    # The same four average updates stepped without a restart, from the first model on.
    assert [v for _, _, v in steps] == [0, 1, 2, 3]
    params, state = steps[0][0], initial_state(ADAM, len(steps[0][0]))
    for before, delta, _ in steps:
        assert before.tobytes() == params.tobytes()  # the resumed run started where it was
        params, state = server_step(ADAM, state, params, delta)
    assert final.tobytes() == params.tobytes()
    plain = steps[-1][0] + steps[-1][1]  # and it is not FedAvg's step
    assert not np.allclose(final, plain)
    saved = json.loads((second.store.run_dir / FILE).read_text())
    assert saved["optimizer"] == "fedadam" and sorted(saved["states"]) == ["3", "4"]
    assert ServerState.from_dict(saved["states"]["4"]).equals(state)
    # Every agent verified the round's signature and read the server settings in it.
    assert all(agent.server == ADAM for agent in agents)
    assert "the gateway steps the model with server optimizer fedadam" in caplog.text
    metrics = [MetricsMessage.from_bytes(p) for t, p in published if t.endswith("/metrics")]
    assert [m.server_optimizer for m in metrics] == ["fedadam"] * 3  # 3, 4, evaluation
