from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.data import DataError
from fedmq.edge_agent.local_link import Delivery
from fedmq.edge_agent.stream import StreamRows, StreamSource
from fedmq.protocol.errors import ConfigError

T0 = float(int(time.time()))  # readings older than keep_days are removed by retention

STREAM = """
[agent]
id = "pi-1"
state_dir = "state"
[data]
source = "mqtt"
features = ["temp", "hum", "vib"]
label = "fault"
[data.stream]
join_seconds = 2.0
time = "$.ts"
[[data.stream.topics]]
topic = "zigbee2mqtt/sensor1"
fields = { temp = "$.temperature", hum = "$.humidity" }
[[data.stream.topics]]
topic = "shellies/+/status"
fields = { vib = "$.sensors[0].value", fault = "$.alarm" }
"""


def load(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "a.toml"
    path.write_text(text)
    return AgentConfig.from_file(path)


class Acks:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def delivery(self, topic: str, doc: object) -> Delivery:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return Delivery(topic, payload, lambda: self.acked.append(topic))


def test_stream_config_is_read(tmp_path):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None and cfg.data_path == ""
    assert cfg.stream.database == str(tmp_path / "state" / "readings.sqlite3")
    assert cfg.stream.columns == ("temp", "hum", "vib", "fault")
    assert [t.topic for t in cfg.stream.topics] == ["zigbee2mqtt/sensor1", "shellies/+/status"]


@pytest.mark.parametrize(("change", "message"), [
    (("source = \"mqtt\"\n", ""), "path is required"),
    (("fault = \"$.alarm\"", "x = \"$.alarm\""), "no topic's fields give fault"),
    (("$.humidity", "$.hum[x]"), "cannot read"),
    (("join_seconds = 2.0", "label_rule = \"vib >> 3\""), "one comparison"),
    (("join_seconds = 2.0", "train_on = \"window\""), "train_seconds"),
    (("state_dir = \"state\"", ""), "state_dir"),
    (("\"shellies/+/status\"", "\"z2m/#/wine\""), "'#' must be a whole level and the last"),
    (("\"shellies/+/status\"", "\"z2m/wine#\""), "'#' must be a whole level"),
    (("\"shellies/+/status\"", "\"a/+b\""), "'[+]' must be a whole level"),
    (("\"shellies/+/status\"", "\"a/\\u0000\""), "not a valid MQTT topic filter"),
    (("\"shellies/+/status\"", "\"#\""), "fleet's own topics under fedmq/"),
    (("\"shellies/+/status\"", "\"fedmq/#\""), "fleet's own topics"),
    (("\"shellies/+/status\"", "\"+/+/updates\""), "fleet's own topics"),
])
def test_bad_stream_configs_are_one_line(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, STREAM.replace(*change))
    assert "\n" not in str(info.value)


def test_filters_beside_the_fleet_prefix_are_accepted(tmp_path):
    for topic in ("fedmq/otherfleet/x", "fedmqx/#", "+/sensor1", "zigbee2mqtt/#"):
        cfg = load(tmp_path, STREAM.replace("\"shellies/+/status\"", f"\"{topic}\""))
        assert cfg.stream is not None and cfg.stream.topics[1].topic == topic


def test_label_rule_replaces_the_label_field(tmp_path):
    text = STREAM.replace("fault = \"$.alarm\"", "").replace(
        "join_seconds = 2.0", "join_seconds = 2.0\nlabel_rule = \"vib > 3.5\"")
    text = text.replace("fields = { vib = \"$.sensors[0].value\",  }",
                        "fields = { vib = \"$.sensors[0].value\" }")
    cfg = load(tmp_path, text)
    assert cfg.stream is not None and cfg.stream.label_rule is not None
    src = StreamSource(cfg.stream)
    acks = Acks()
    src.ingest([acks.delivery("zigbee2mqtt/sensor1", {"temperature": 1, "humidity": 2,
                                                      "ts": T0}),
                acks.delivery("shellies/x/status", {"sensors": [{"value": 4.0}], "ts": T0}),
                acks.delivery("zigbee2mqtt/sensor1", {"temperature": 1, "humidity": 2,
                                                      "ts": T0 + 100}),
                acks.delivery("shellies/x/status", {"sensors": [{"value": 3.0}], "ts": T0 + 100})])
    assert src.rejected == {}, src.rejected
    assert src.store.latest(10)[1][:, -1].tolist() == [1.0, 0.0]


def test_joined_malformed_and_out_of_order_readings(tmp_path, caplog):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    src = StreamSource(cfg.stream, on_rows=lambda X, ts: seen.append((X, ts)))
    acks = Acks()
    z, s = "zigbee2mqtt/sensor1", "shellies/vib/status"
    batch = [
        acks.delivery(z, {"temperature": 21.5, "humidity": "40", "ts": T0}),
        acks.delivery(s, {"sensors": [{"value": 0.5}], "alarm": False, "ts": T0 + 1}),
        acks.delivery(s, {"sensors": [{"value": 9}], "alarm": True, "ts": (T0 + 10) * 1000}),  # ms
        acks.delivery(z, {"temperature": 30, "humidity": 50, "ts": T0 + 9.5}),  # earlier
        acks.delivery(z, b"{not json"),
        acks.delivery(z, {"temperature": None, "humidity": 1, "ts": 1}),
        acks.delivery(s, {"alarm": True, "ts": 1}),
        acks.delivery("other/topic", {"x": 1}),
    ]
    with caplog.at_level(logging.WARNING):
        assert src.ingest(batch) == 2
    assert len(acks.acked) == len(batch)  # every message handled is acknowledged
    ts, table = src.store.latest(10)
    assert ts.tolist() == [T0 + 1, T0 + 10]
    assert table.tolist() == [[21.5, 40.0, 0.5, 0.0], [30.0, 50.0, 9.0, 1.0]]
    assert src.rejected == {"not-json": 1, "not-a-number": 1, "missing-field": 1,
                            "unknown-topic": 1}
    assert len(seen) == 1 and seen[0][0].shape == (2, 3)
    # one line per reason, not per message
    more = [acks.delivery(z, b"{bad") for _ in range(50)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        src.ingest(more)
    assert src.rejected["not-json"] == 51 and len(caplog.records) == 0
    src.close()


def test_a_half_joined_row_survives_a_restart(tmp_path):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    acks = Acks()
    src = StreamSource(cfg.stream)
    src.ingest([acks.delivery("zigbee2mqtt/sensor1", {"temperature": 1, "humidity": 2,
                                                      "ts": T0})])
    src.close()  # acknowledged but not yet a row: kept in the store's join state
    again = StreamSource(cfg.stream)
    assert again.ingest([acks.delivery("shellies/a/status", {"sensors": [{"value": 3}],
                                                             "alarm": 1, "ts": T0 + 1})]) == 1
    assert again.store.latest(5)[1].tolist() == [[1, 2, 3, 1]]
    assert again.store.pending() == []


def test_stream_rows_read_like_a_csv(tmp_path):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    rows = StreamRows(cfg.stream, cfg.features, cfg.label)
    assert rows.data.n_samples == 0
    with pytest.raises(DataError, match="no rows yet"):
        rows.refresh()
    src = StreamSource(cfg.stream)
    src.store.add([(T0 + i, [i, i, i, i % 2]) for i in range(5)])
    assert rows.refresh() and rows.data.n_samples == 5 and not rows.refresh()
    assert rows.train.X.shape == (5, 3) and rows.train.y.tolist() == [0, 1, 0, 1, 0]


def test_a_resend_of_a_stored_message_is_stored_once(tmp_path):
    cfg = load(tmp_path, STREAM.replace("time = \"$.ts\"\n", "").replace(
        "shellies/+/status", "zigbee2mqtt/sensor1/x"))
    assert cfg.stream is not None
    src = StreamSource(cfg.stream)
    doc = json.dumps({"temperature": 1, "humidity": 2}).encode()
    other = json.dumps({"sensors": [{"value": 1}], "alarm": 0}).encode()
    seen: list[str] = []
    first = [Delivery("zigbee2mqtt/sensor1", doc, lambda: seen.append("a")),
             Delivery("zigbee2mqtt/sensor1/x", other, lambda: seen.append("b"))]
    assert src.ingest(first) == 1
    # the same bytes again, not flagged: a new reading (a sensor may repeat itself)
    again = [Delivery("zigbee2mqtt/sensor1", doc, lambda: None),
             Delivery("zigbee2mqtt/sensor1/x", other, lambda: None)]
    assert src.ingest(again) == 1
    # flagged DUP by the broker after a restart: already stored, acknowledged, skipped
    resent = [Delivery("zigbee2mqtt/sensor1", doc, lambda: seen.append("dup"), dup=True)]
    assert src.ingest(resent) == 0 and src.resent == 1 and "dup" in seen
    assert src.store.count() == 2 and src.store.pending() == []


def test_a_time_window_trains_on_the_recent_rows_only(tmp_path):
    cfg = load(tmp_path, STREAM.replace("join_seconds = 2.0",
                                        "join_seconds = 2.0\ntrain_on = \"window\"\n"
                                        "train_seconds = 60"))
    assert cfg.stream is not None
    now = [T0]
    src = StreamSource(cfg.stream)
    src.store.add([(T0 - 120, [9, 9, 9, 1]), (T0 - 30, [1, 1, 1, 0]), (T0 - 10, [2, 2, 2, 1])])
    rows = StreamRows(cfg.stream, cfg.features, cfg.label, clock=lambda: now[0])
    assert rows.data.X[:, 0].tolist() == [1, 2]
    now[0] = T0 + 40  # no new rows, but the window moved past one of them
    assert rows.refresh() and rows.data.X[:, 0].tolist() == [2]
    now[0] = T0 + 100
    with pytest.raises(DataError, match="last 60 s"):
        rows.refresh()


def test_one_unusable_message_never_holds_back_its_batch(tmp_path, caplog):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    src = StreamSource(cfg.stream)
    acks = Acks()
    z, s = "zigbee2mqtt/sensor1", "shellies/vib/status"
    batch = [
        acks.delivery(z, {"temperature": 21.5, "humidity": 40, "ts": T0}),
        acks.delivery(z, b'{"temperature": 1' + b"0" * 400 + b', "humidity": 1, "ts": 1}'),
        acks.delivery(z, b"[" * 60_000),  # RecursionError in json, not a ValueError
        acks.delivery(s, {"sensors": [{"value": 0.5}], "alarm": False, "ts": T0 + 1}),
    ]
    with caplog.at_level(logging.WARNING):
        assert src.ingest(batch) == 1
    assert len(acks.acked) == len(batch)
    assert src.rejected == {"not-a-number": 1, "unreadable": 1}
    assert not any(r.exc_info for r in caplog.records)
    src.close()


def test_a_failing_store_keeps_the_batch_unacknowledged_and_logs_once(tmp_path, caplog,
                                                                       monkeypatch):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    src = StreamSource(cfg.stream)
    acks = Acks()

    def broken(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(src.store, "commit", broken)
    monkeypatch.setattr("fedmq.edge_agent.stream.time.sleep", lambda _s: None)
    for i in range(3):
        src._queue.put(acks.delivery("zigbee2mqtt/sensor1",
                                     {"temperature": i, "humidity": 1, "ts": T0}))
        src._queue.put(None)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            src._write_loop()
    assert acks.acked == [] and src.commit_failures == 3
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None
    assert "disk full" in caplog.records[0].getMessage()
    src.close()


def test_a_reading_from_the_future_is_rejected_not_joined(tmp_path):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    src = StreamSource(cfg.stream, clock=lambda: T0)
    acks = Acks()
    z, s = "zigbee2mqtt/sensor1", "shellies/vib/status"
    src.ingest([acks.delivery(z, {"temperature": 1, "humidity": 2, "ts": 9.9e10})])
    assert src.rejected == {"future": 1} and src.store.pending() == []
    # later readings still join: "newest" did not move to the year 5100
    assert src.ingest([acks.delivery(z, {"temperature": 1, "humidity": 2, "ts": T0}),
                       acks.delivery(s, {"sensors": [{"value": 1}], "alarm": 0,
                                         "ts": T0 + 1})]) == 1
    assert src.late == 0 and len(acks.acked) == 3
    # clock skew within the tolerance is fine
    src.ingest([acks.delivery(z, {"temperature": 1, "humidity": 2, "ts": T0 + 200})])
    assert src.rejected == {"future": 1}
    src.close()


def test_a_full_queue_drops_and_acknowledges(tmp_path, monkeypatch):
    # Unacknowledged, each drop would keep a slot of the broker's inflight window forever.
    monkeypatch.setattr("fedmq.edge_agent.stream.MAX_QUEUED", 2)
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    src = StreamSource(cfg.stream)
    acks = Acks()
    for i in range(5):
        src._arrived(acks.delivery("zigbee2mqtt/sensor1",
                                   {"temperature": i, "humidity": 1, "ts": T0}))
    assert src.rejected == {"queue-full": 3} and len(acks.acked) == 3
    src.close()


def test_a_flood_of_one_topic_leaves_a_bounded_pending_table(tmp_path):
    cfg = load(tmp_path, STREAM)
    assert cfg.stream is not None
    src = StreamSource(cfg.stream, clock=lambda: T0)
    acks = Acks()
    flood = [acks.delivery("zigbee2mqtt/sensor1", {"temperature": i, "humidity": 1, "ts": T0})
             for i in range(2500)]
    for start in range(0, len(flood), 1000):
        src.ingest(flood[start:start + 1000])
    assert len(src.store.pending()) == 1000 and src.stale_rows == 1500
    assert len(acks.acked) == 2500
    src.close()
