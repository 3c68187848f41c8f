"""kill -9 of a real agent process while it ingests a sensor stream from a real broker.

The witness sits on the wire: a TCP proxy between the agent and its local broker reads
every PUBLISH the broker delivers and every PUBACK the agent sends. A reading whose
PUBACK left the agent is one the agent acknowledged; after each kill the database must
open cleanly (integrity_check ok) and hold every one of them. The test can fail: an
agent that acknowledged on arrival (paho's default) and stored later loses the readings
between the two on a kill, and those would be missing here. After the last restart
every published reading is stored exactly once (the broker resends what was never
acknowledged; a resend of one stored before the kill is recognised).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_support import Probe, running_mosquitto
from support import fedmq_process, signer_for, wait_until

from fedmq.broker.embedded import free_port, stop_process

pytestmark = pytest.mark.slow
KILLS = 4
BURST = 300
TOPIC = "home/dev-1/reading"


def _varint(sock_bytes: bytearray, start: int) -> tuple[int, int] | None:
    value, shift, i = 0, 0, start
    while i < len(sock_bytes):
        b = sock_bytes[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return None


class AckWitness:
    """A proxy that forwards bytes both ways and parses the MQTT packets it sees."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.acked: set[int] = set()  # reading numbers whose PUBACK the agent sent
        self._inflight: dict[int, int] = {}  # packet id -> reading number (this connection)
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            with self._lock:
                self._inflight = {}
            threading.Thread(target=self._pipe, args=(client, upstream, self._to_broker),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self._to_agent),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, parse) -> None:  # type: ignore[no-untyped-def]
        buf = bytearray()
        try:
            while data := src.recv(65536):
                buf += data
                while True:  # whole packets only: parse, then forward
                    head = _varint(buf, 1) if len(buf) > 1 else None
                    if head is None or len(buf) < head[1] + head[0]:
                        break
                    length, body = head
                    packet = bytes(buf[:body + length])
                    del buf[:body + length]
                    parse(packet[0], packet[body:])
                    dst.sendall(packet)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def _to_agent(self, first: int, body: bytes) -> None:
        if first >> 4 == 3 and (first >> 1) & 3 == 1:  # PUBLISH, QoS 1
            n = int.from_bytes(body[:2], "big")
            pid = int.from_bytes(body[2 + n:4 + n], "big")
            reading = json.loads(body[4 + n:])
            with self._lock:
                self._inflight[pid] = int(reading["seq"])

    def _to_broker(self, first: int, body: bytes) -> None:
        if first >> 4 == 4:  # PUBACK
            pid = int.from_bytes(body[:2], "big")
            with self._lock:
                if pid in self._inflight:
                    self.acked.add(self._inflight.pop(pid))

    def close(self) -> None:
        self._server.close()


def _config(tmp_path: Path, fleet_port: int, local_port: int) -> Path:
    key = tmp_path / "dev-1.key"
    key.write_bytes(signer_for("dev-1").to_pem())
    key.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
id = "dev-1"
state_dir = "{tmp_path / 'state'}"
signing_key_file = "{key}"
[fleet]
name = "kill"
[mqtt]
port = {fleet_port}
[local]
port = {local_port}
[data]
source = "mqtt"
features = ["seq", "v"]
label = "y"
[data.stream]
[[data.stream.topics]]
topic = "{TOPIC}"
fields = {{ seq = "$.seq", v = "$.sensor.v", y = "$.y" }}
""")
    return config


def _stored(db: Path) -> tuple[str, set[int], int]:
    con = sqlite3.connect(db)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        seqs = [int(r[0]) for r in con.execute("SELECT c0 FROM rows")]
    finally:
        con.close()
    return check, set(seqs), len(seqs)


@pytest.fixture
def local_mosquitto(tmp_path: Path) -> Iterator[int]:
    """The device's own broker: Mosquitto, which resends unacknowledged QoS 1 messages to a
    returning persistent session (amqtt discards them when the subscriber goes away)."""
    port = free_port()
    conf = tmp_path / "local.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 100000\n")
    with running_mosquitto(conf, port, tmp_path / "mosquitto.log"):
        yield port


def test_killed_agent_keeps_every_acknowledged_reading(tmp_path, broker_port, local_mosquitto):
    witness = AckWitness(local_mosquitto)
    config = _config(tmp_path, broker_port, witness.port)
    db = tmp_path / "state" / "readings.sqlite3"
    publisher = Probe(local_mosquitto, "sensor")
    assert publisher.connect()
    published = 0
    stop = threading.Event()

    def publish() -> None:
        # Bursts: the agent has readings in hand, not yet stored, at most moments of a kill
        # (an agent that acknowledged on arrival loses those).
        nonlocal published
        while not stop.is_set():
            for _ in range(BURST):
                doc = {"seq": published, "sensor": {"v": published % 7}, "y": published % 2}
                publisher.client.publish(TOPIC, json.dumps(doc), qos=1)
                published += 1
            time.sleep(0.1)

    rng = random.Random(7)
    log = tmp_path / "agent.log"
    proc = fedmq_process("agent", "--config", str(config), log=log)
    feeder = threading.Thread(target=publish, daemon=True)
    try:
        # Subscribed (its session exists from then on: the broker keeps what it misses).
        wait_until(lambda: f"connected to 127.0.0.1:{witness.port}" in log.read_text(),
                   "the agent's local connection", timeout=30)
        feeder.start()
        for _ in range(KILLS):
            wait_until(lambda: len(witness.acked) > 50, "acknowledged readings", timeout=30)
            time.sleep(rng.uniform(0.2, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            time.sleep(0.3)  # let the last PUBACK bytes, if any, pass the witness
            acked = set(witness.acked)
            check, stored, _rows = _stored(db)
            assert check == "ok"
            lost = acked - stored
            assert not lost, f"{len(lost)} acknowledged readings missing, e.g. {sorted(lost)[:5]}"
            proc = fedmq_process("agent", "--config", str(config), log=tmp_path / "agent.log")
        stop.set()
        feeder.join(5)
        # Everything published arrives in the end: the broker resends what was never acked.
        def missing() -> set[int]:
            return set(range(published)) - _stored(db)[1]

        try:
            wait_until(lambda: not missing(), "every reading stored", timeout=60)
        except AssertionError:
            raise AssertionError(f"{len(missing())} of {published} never stored, e.g. "
                                 f"{sorted(missing())[:10]}") from None
        # ... and once: a resend (DUP) of a reading stored before the kill is recognised.
        check, stored, rows = _stored(db)
        assert check == "ok" and rows == published == len(stored)
    finally:
        stop.set()
        stop_process(proc)
        witness.close()
        publisher.client.loop_stop()
    text = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in text
