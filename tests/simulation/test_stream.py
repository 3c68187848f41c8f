from __future__ import annotations

import numpy as np
import pytest

from fedmq.protocol.errors import ConfigError
from fedmq.simulation.options import SimulationOptions
from fedmq.simulation.run import Simulation
from fedmq.simulation.stream import DATABASE, local_topic, stored_rows

BASE = {"agents": 3, "rounds": 3, "key_bits": 512, "samples_per_device": 200, "seed": 3,
        "plot": False}


def test_a_streamed_fleet_learns_as_well_as_from_the_same_rows_in_csvs(tmp_path):
    csv = Simulation(SimulationOptions(**BASE, out_dir=str(tmp_path / "csv")),
                     progress=lambda _: None).run()
    lines: list[str] = []
    sim = Simulation(SimulationOptions(**BASE, stream=True, stream_rate=500.0,
                                       out_dir=str(tmp_path / "stream")),
                     progress=lines.append)
    streamed = sim.run()
    # The same rows reach training: the same model, up to float formatting (none here).
    assert streamed.federated_score == pytest.approx(csv.federated_score, abs=0.01)
    np.testing.assert_allclose(streamed.final_params, csv.final_params, atol=1e-6)
    for agent, dev in zip(sim.agents, sim.devices, strict=True):
        assert agent.stream is not None and agent.stream.ingested == len(dev.train)
        assert agent.config.stream is not None
        assert agent.config.stream.topics[0].topic == local_topic(dev.device_id)
        assert not local_topic(dev.device_id).startswith("fedmq/")  # never the fleet prefix
        db = sim.out_dir / "agents" / dev.device_id / DATABASE
        assert stored_rows(db) == len(dev.train)
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("device "))):]
    assert table[0].split() == ["device", "published", "stored", "predictions"]
    n = str(len(sim.devices[0].train))
    # Each new model version predicts the newest reading again: what the agent published is
    # what a subscriber on the device's local topic counted.
    published = sim.agents[0].predictions.predictor.published  # type: ignore[union-attr]
    assert published >= 1
    assert table[1].split() == ["dev-000", n, n, str(published)]


def test_stream_needs_the_embedded_broker():
    with pytest.raises(ConfigError, match="embedded"):
        SimulationOptions(stream=True, broker="mosquitto")
    with pytest.raises(ConfigError, match="stream-rate"):
        SimulationOptions(stream=True, stream_rate=0)
