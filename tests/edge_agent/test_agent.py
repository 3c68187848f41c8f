"""The edge agent against a real embedded broker and aggregator (small key, small data)."""

from __future__ import annotations

import threading

from support import agent_config, local_data

from edge_agent.agent import EdgeAgent


def test_agent_persists_only_trusted_key_and_final_model(tmp_path, broker_port,
                                                         make_aggregator):
    """Obfuscators live in memory only: nothing of them may reach the state directory.

    (The signing key lives in the test key directory here, set by agent_config.)
    """
    state = tmp_path / "agent-state"
    agent = EdgeAgent(agent_config(broker_port, "pi-1", state_dir=str(state),
                                   obfuscator_pool=8), data=local_data(0, 60))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    make_aggregator(broker_port, rounds=3).run()
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(p.name for p in state.iterdir()) == [
        "final_model.npz", "trusted_aggregator_signing_key", "trusted_key_fingerprint"]
    assert sorted(agent.history) == [1, 2, 3]
    assert agent._pool is None  # closed with the run: every precomputed value dropped
