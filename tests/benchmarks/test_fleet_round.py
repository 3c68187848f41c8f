"""fedmq bench-round at a tiny size: every device's pre-signed update counted through Mosquitto."""

from __future__ import annotations

import json

from mqtt_support import mosquitto_binary

from fedmq.benchmarks.fleet_round import measure
from fedmq.cli import main


def test_a_small_fleet_round_counts_every_device_and_reports_every_process(capsys):
    mosquitto_binary()  # skips without Mosquitto
    row = measure(devices=30, d=3, bits=512, senders=2, progress=lambda _line: None)
    assert (row.counted, row.rejected, row.never_arrived, row.unacked) == (30, {}, 0, 0)
    assert row.round_seconds > 0 and row.send_to_model > 0
    assert set(row.rss_mb) == {"aggregator", "broker", "sender-0", "sender-1",
                               "main (builds the updates)"}
    assert all(mb > 1 for mb in row.rss_mb.values())
    assert row.out_of_memory == 0  # the senders' graceful close waits for their PUBACKs
    assert "| 30 | 3 | 512 |" in row.table()


def test_cli_writes_the_row(tmp_path, capsys):
    mosquitto_binary()
    out = tmp_path / "round.json"
    assert main(["bench-round", "--devices", "12", "--dims", "2", "--bits", "512",
                 "--senders", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["devices"] == doc["counted"] == 12 and "sender-0" in doc["rss_mb"]
    assert "first send to model s" in capsys.readouterr().out
