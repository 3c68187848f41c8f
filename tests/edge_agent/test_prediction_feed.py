"""A real agent, a real aggregator and two real brokers: the fleet's and the device's own.

Predictions appear on the local broker, equal to the model's, naming its version; the
fleet broker never sees one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
from mqtt_support import Probe
from support import (
    FEATURES,
    KEY_DIR,
    SPEC,
    agent_config,
    announcement,
    local_data,
    signer_for,
    wait_until,
)

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent import prediction_feed
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.prediction_settings import PredictionSettings
from fedmq.models import make_model
from fedmq.runtime.transport import MqttSettings

TOPIC = "home/fedmq/pi-1/prediction"
DISCOVERY = "homeassistant/sensor/fedmq_test_pi-1/prediction/config"


def write_csv(path, X, y, mode="w"):
    with path.open(mode) as fh:
        if mode == "w":
            fh.write(",".join((*FEATURES, "y")) + "\n")
        for row, label in zip(X, y, strict=True):
            fh.write(",".join(repr(float(v)) for v in (*row, label)) + "\n")


def predictions(probe: Probe) -> list[dict]:
    return [json.loads(p) for p in probe.got(TOPIC)]


def test_predictions_stay_on_the_local_broker_and_follow_the_model(
        tmp_path, broker_port, make_aggregator, monkeypatch):
    monkeypatch.setattr(prediction_feed, "POLL_SECONDS", 0.2)
    local_port = free_port()
    data = local_data(0, 60)
    csv = tmp_path / "pi-1.csv"
    write_csv(csv, data.X, data.y)
    with EmbeddedBroker(BrokerSettings(port=local_port)):
        home = Probe(local_port, "home-assistant")
        fleet_sniffer = Probe(broker_port, "sniffer")
        assert home.connect() and fleet_sniffer.connect()
        assert home.subscribe("#") and fleet_sniffer.subscribe("#")
        config = replace(agent_config(
            broker_port, "pi-1", exit_when_finished=False,
            state_dir=str(tmp_path / "state"), local=MqttSettings(port=local_port),
            predictions=PredictionSettings(topic=TOPIC, home_assistant=True)),
            data_path=str(csv))
        agent = EdgeAgent(config)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            make_aggregator(broker_port, rounds=2).run()
            final = wait_until(lambda: [d for d in predictions(home) if d["version"] == 2],
                               "a prediction with the final model")
            # One prediction per new model version, each for the newest reading.
            versions = [d["version"] for d in predictions(home)]
            assert versions == sorted(versions) and {1, 2} <= set(versions)
            assert agent.final_params is not None
            model = make_model(SPEC).set_params_vector(agent.final_params)
            latest = data.X[-1:]
            assert final[-1]["prediction"] == model.predict(latest)[0]
            assert final[-1]["probabilities"]["1"] == model.predict_proba(latest)[0, 1]
            assert final[-1]["model"] == "global" and final[-1]["fleet"] == "test"

            # A logger appends rows: each gets its prediction, with the current model.
            new = local_data(7, 4)
            write_csv(csv, new.X, new.y, mode="a")
            wait_until(lambda: len(predictions(home)) >= len(versions) + 4, "all four")
            fresh = predictions(home)[len(versions):]
            assert [d["prediction"] for d in fresh] == model.predict(new.X).tolist()
            assert [d["probabilities"]["0"] for d in fresh] == \
                model.predict_proba(new.X)[:, 0].tolist()
            assert {d["version"] for d in fresh} == {2}

            discovery = json.loads(home.got(DISCOVERY)[-1])
            assert discovery["state_topic"] == TOPIC
        finally:
            agent.stop()
            thread.join(10)
        # The fleet broker carried the fleet's topics only: no prediction, no discovery.
        fleet_topics = {t for t, _ in fleet_sniffer.received}
        assert fleet_topics and all(t.startswith("fedmq/test/") for t in fleet_topics)
        assert not any(b"probabilities" in p or b"prediction" in p
                       for _, p in fleet_sniffer.received)
        # ... and the local broker none of the fleet's.
        assert not any(t.startswith("fedmq/") for t, _ in home.received)
        home.close()
        fleet_sniffer.close()
    assert np.isfinite(final[-1]["ts"])


STREAM_AGENT = """
[agent]
id = "pi-1"
state_dir = "state"
signing_key_file = "{key}"
[fleet]
name = "test"
[mqtt]
port = {fleet_port}
[local]
port = {local_port}
[data]
source = "mqtt"
features = ["x1", "x2", "x3"]
label = "y"
[data.stream]
time = "$.ts"
[[data.stream.topics]]
topic = "sensors/pi-1"
fields = {{ x1 = "$.a", x2 = "$.b.c", x3 = "$.d", y = "$.fault" }}
[predictions]
enabled = true
"""


def test_stream_readings_get_predictions_on_the_local_broker(tmp_path, broker_port):
    """The stream source's on_rows hook: each stored reading, predicted with its own ts."""
    key = KEY_DIR / "pi-1.key"
    if not key.exists():
        key.write_bytes(signer_for("pi-1").to_pem())
        key.chmod(0o600)
    local_port = free_port()
    path = tmp_path / "agent.toml"
    path.write_text(STREAM_AGENT.format(key=key, fleet_port=broker_port,
                                        local_port=local_port))
    config = AgentConfig.from_file(path)
    assert config.predictions is not None
    topic = config.predictions.topic
    with EmbeddedBroker(BrokerSettings(port=local_port)):
        home = Probe(local_port, "home-assistant")
        assert home.connect() and home.subscribe("#")
        agent = EdgeAgent(config)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            assert agent.local_link is not None and agent.predictions is not None
            wait_until(lambda: agent.local_link.connected, "the local link")
            params = np.random.default_rng(0).normal(size=SPEC.n_params)
            msg = replace(announcement(3), params=tuple(params))
            agent.predictions.on_round(msg)  # as the agent's loop does with a verified round
            model = make_model(SPEC).set_params_vector(msg.params_array)
            X = np.random.default_rng(2).normal(size=(5, 3))
            for i, (a, b, d) in enumerate(X.tolist()):
                home.publish("sensors/pi-1", json.dumps(
                    {"ts": 1_765_000_000 + i, "a": a, "b": {"c": b}, "d": d,
                     "fault": 0}).encode())
            got = wait_until(lambda: len(home.got(topic)) >= 5 and home.got(topic),
                             "five predictions")
            docs = [json.loads(p) for p in got]
            assert [d["ts"] for d in docs] == [1_765_000_000.0 + i for i in range(5)]
            assert [d["prediction"] for d in docs] == model.predict(X).tolist()
            assert [d["probabilities"]["1"] for d in docs] == \
                model.predict_proba(X)[:, 1].tolist()
            assert {(d["version"], d["run"], d["model"]) for d in docs} == {(3, "r1", "global")}
        finally:
            agent.stop()
            thread.join(10)
        home.close()
