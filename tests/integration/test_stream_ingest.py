"""A real agent process ingesting JSON readings of two topics from a real broker.

Nested fields, a join of two topics by the readings' own times (some out of order),
malformed and incomplete messages: the rows stored are exactly the joined rows of what
was published, the bad messages are dropped without a crash, and a joined row never
waits for a reading that will not come.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from mqtt_support import Probe
from support import fedmq_process, signer_for, wait_until

from fedmq.broker.embedded import stop_process

pytestmark = pytest.mark.slow
# Readings' own times (epoch s): an hour back, as a reading more than 300 s ahead of its
# arrival is refused as "future" (and retention keeps 30 days back from now).
T0 = float(int(time.time())) - 3600.0


def _config(tmp_path: Path, port: int) -> Path:
    key = tmp_path / "dev-2.key"
    key.write_bytes(signer_for("dev-2").to_pem())
    key.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
id = "dev-2"
state_dir = "{tmp_path / 'state'}"
signing_key_file = "{key}"
[fleet]
name = "ingest"
[mqtt]
port = {port}
[local]
port = {port}
[data]
source = "mqtt"
features = ["temp", "hum", "vib"]
label = "fault"
[data.stream]
join_seconds = 1.0
time = "$.ts"
keep_days = 36500
[[data.stream.topics]]
topic = "home/climate/+"
fields = {{ temp = "$.state.temperature", hum = "$.state.humidity" }}
[[data.stream.topics]]
topic = "home/vibration"
fields = {{ vib = "$.sensors[1].value", fault = "$.alarm" }}
""")
    return config


def test_two_topics_joined_from_a_real_broker(tmp_path, broker_port):
    db = tmp_path / "state" / "readings.sqlite3"
    log = tmp_path / "agent.log"
    proc = fedmq_process("agent", "--config", str(_config(tmp_path, broker_port)), log=log)
    sensor = Probe(broker_port, "sensors")
    assert sensor.connect()
    try:
        wait_until(lambda: log.read_text().count(f"connected to 127.0.0.1:{broker_port}") >= 2,
                   "both of the agent's connections", timeout=30)
        wait_until(lambda: db.exists(), "the readings database", timeout=30)

        def climate(i: int, ts: float) -> bytes:
            return json.dumps({"state": {"temperature": 20 + i, "humidity": str(40 + i)},
                               "ts": ts}).encode()

        def vibration(i: int, ts: float) -> bytes:
            return json.dumps({"sensors": [{"value": -1}, {"value": i / 10}],
                               "alarm": i % 2 == 1, "ts": ts * 1000}).encode()  # ms

        expected = []
        for i in range(20):
            ts = T0 + 10 * i
            first, second = ("home/vibration", vibration(i, ts + 0.5)), \
                ("home/climate/kitchen", climate(i, ts))
            if i % 3 == 0:  # the later reading arrives first: out of order
                first, second = second, first
            for topic, payload in (first, second):
                sensor.client.publish(topic, payload, qos=1).wait_for_publish(5)
            expected.append([T0 + 10 * i + 0.5, 20 + i, 40 + i, i / 10, float(i % 2)])
            if i == 5:  # bad messages in between: dropped, counted, no crash
                for topic, payload in [("home/climate/x", b"{not json"),
                                       ("home/climate/x", b'{"state": {"temperature": "hot", '
                                                          b'"humidity": 1}, "ts": 1}'),
                                       ("home/vibration", b'{"sensors": [], "ts": 1}')]:
                    sensor.client.publish(topic, payload, qos=1).wait_for_publish(5)
        # a climate reading whose vibration partner never comes: dropped when time moves on
        sensor.client.publish("home/climate/kitchen", climate(99, T0 + 500), qos=1)
        sensor.client.publish("home/climate/kitchen", climate(21, T0 + 1000), qos=1)
        sensor.client.publish("home/vibration", vibration(21, T0 + 1000), qos=1)
        expected.append([T0 + 1000, 41, 61, 2.1, 1.0])

        def rows() -> list[list[float]]:
            con = sqlite3.connect(db)
            try:
                return [list(r) for r in con.execute(
                    "SELECT ts, c0, c1, c2, c3 FROM rows ORDER BY ts")]
            finally:
                con.close()

        wait_until(lambda: len(rows()) >= len(expected), "the joined rows", timeout=30)
        np.testing.assert_allclose(rows(), expected)
        assert proc.poll() is None
    finally:
        stop_process(proc)
        sensor.client.loop_stop()
    text = log.read_text()
    assert "Traceback" not in text
    assert "not-json" in text or "not JSON" in text  # one line for the bad payloads
