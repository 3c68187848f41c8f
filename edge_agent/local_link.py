"""The device's own broker (``[local]``): sensor readings in, predictions out.

A second MQTT connection beside the fleet link (``[mqtt]``), never the same client:
readings and predictions stay on the device's broker and its login. Every message is
handed to the callback of the subscription it matches; QoS 1 messages are acknowledged
(PUBACK) only when the callback says so (``Delivery.ack``) if it asked for that, else
as soon as it returns (paho's own behaviour).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from fedmq.runtime.transport import (
    MqttLink,
    MqttSettings,
    NetworkLoop,
    topic_matches,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One message from the local broker; ``ack()`` sends its PUBACK (QoS 1), once.
    ``dup``: a resend (the broker may have delivered it before the agent went away)."""

    topic: str
    payload: bytes
    _ack: Callable[[], None] = field(repr=False, default=lambda: None)
    dup: bool = False
    _done: list[bool] = field(repr=False, default_factory=lambda: [False])

    def ack(self) -> None:
        if not self._done[0]:
            self._done[0] = True
            self._ack()


Callback = Callable[[Delivery], None]


class LocalLink:
    """A reconnecting connection to the device's broker, with per-filter callbacks.

    Callbacks run on the network thread: they must only convert and hand off (a queue),
    never train or write to disk there. A callback subscribed with ``manual_ack=True``
    acknowledges each message itself (from any thread) once it is stored; a broker
    redelivers what was never acknowledged when the agent comes back (persistent
    session, ``clean_session=False``), so a kill between arrival and storage loses nothing.
    """

    def __init__(self, settings: MqttSettings, *, client_id: str,
                 network: NetworkLoop | None = None, persistent: bool = True) -> None:
        self.settings = settings
        self.client_id = client_id
        self._routes: list[tuple[str, Callback, bool]] = []
        self._lock = threading.Lock()
        self.unrouted = 0  # messages no subscription's filter matched (none expected)
        self._link = MqttLink(settings, client_id=client_id, on_message=_never,
                              on_delivery=self._deliver, clean_session=not persistent,
                              network=network)

    def subscribe(self, topic_filter: str, callback: Callback, *, qos: int = 1,
                  manual_ack: bool = False) -> None:
        """Hand messages matching ``topic_filter`` to ``callback`` (also after reconnects)."""
        with self._lock:
            self._routes.append((topic_filter, callback, manual_ack))
        self._link.subscribe(topic_filter, qos)

    def _deliver(self, topic: str, payload: bytes, ack: Callable[[], None],
                 dup: bool = False) -> None:
        delivery = Delivery(topic, payload, ack, dup)
        with self._lock:
            routes = [(cb, manual) for f, cb, manual in self._routes if topic_matches(f, topic)]
        if not routes:
            self.unrouted += 1
            delivery.ack()
            return
        try:
            for callback, _manual in routes:
                callback(delivery)
        finally:
            # Unless a callback keeps the acknowledgement for itself (stored first).
            if not any(manual for _cb, manual in routes):
                delivery.ack()

    @property
    def connected(self) -> bool:
        return self._link.connected

    def connect(self) -> None:
        """One attempt; raises runtime.connecting.BrokerUnavailable saying why."""
        self._link.connect()

    def connect_retrying(self, stop: threading.Event) -> bool:
        """Connect with backoff until connected (True) or ``stop`` is set (False)."""
        return self._link.connect_retrying(stop)

    def publish(self, topic: str, payload: bytes, retain: bool = False, *, qos: int = 0,
                wait: bool = False) -> bool:
        """Publish on the local broker; the signature i23-predict's ``Predictor`` calls."""
        return self._link.publish(topic, payload, qos=qos, retain=retain, wait=wait)

    def close(self) -> None:
        """Disconnect cleanly (QoS 1 publishes acknowledged first, a few seconds at most)."""
        self._link.close(graceful=True, settle=2.0)

    def kill(self) -> None:
        """Drop the connection as a power cut would (a test's or a simulation's crash)."""
        self._link.close(graceful=False)


def _never(topic: str, payload: bytes) -> None:  # on_delivery takes every message
    raise AssertionError(f"unexpected plain delivery on {topic}")
