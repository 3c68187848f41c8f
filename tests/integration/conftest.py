"""Fixtures for fleets behind a broker with logins and a topic ACL: plain MQTT clients.

A ``FleetClient`` logs in as one fleet user and can do exactly what that user
may: the aggregator's user sees every update (as the aggregator would), an
agent's user sees the round announcements. Tests use them as the honest
parties' witnesses and as attackers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode


class FleetClient:
    """A paho client logged in as one user; records every message it receives."""

    def __init__(self, port: int, *, username: str, password: str, client_id: str,
                 will: tuple[str, bytes] | None = None) -> None:
        self.port = port
        self.username = username
        self.received: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.disconnected = threading.Event()
        self._suback: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        # No automatic reconnect: a client the broker threw out must stay out.
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        c.username_pw_set(username, password)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self.connack = reason
            self._cond.notify_all()

    def _on_disconnect(self, *_args: Any) -> None:
        with self._cond:
            self.disconnected.set()
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._cond:
            self._suback[mid] = codes
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, ready: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(ready, timeout)

    def connect(self, timeout: float = 5.0) -> bool:
        """True once the broker accepted the login (no background retries before that)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:
            return False
        end = time.monotonic() + timeout
        while self.connack is None and not self.disconnected.is_set():
            if self.client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            if time.monotonic() > end:
                return False
        if self.connack is None or self.connack.is_failure:
            return False
        self.client.loop_start()
        return True

    def subscribe(self, topic: str, timeout: float = 5.0) -> bool:
        """True if the SUBACK grants the subscription."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None, f"cannot subscribe to {topic}: not connected"
        assert self.wait(lambda: mid in self._suback, timeout), f"no SUBACK for {topic}"
        return not self._suback[mid][0].is_failure

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        """Publish; with QoS 1, return once the broker acknowledged it.

        A PUBACK says the broker took the message, not that anyone may read it:
        a publish outside the ACL is acknowledged and silently dropped.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(5)
            assert info.is_published(), f"no PUBACK for {topic}"

    def got(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.received if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet_client() -> Iterator[Callable[..., FleetClient]]:
    """``fleet_client(port, user, password, client_id=..., will=...)``: a connected client.

    Fails the test if the broker refuses the login; every client is closed at teardown.
    """
    made: list[FleetClient] = []

    def make(port: int, user: str, password: str, *, client_id: str | None = None,
             will: tuple[str, bytes] | None = None) -> FleetClient:
        client = FleetClient(port, username=user, password=password,
                             client_id=client_id or f"test-{user}", will=will)
        made.append(client)
        assert client.connect(), f"the broker refused {user}"
        return client

    yield make
    for client in made:
        client.close()
