"""The one module that talks to paho-mqtt, shared by agents and the aggregator.

It converts paho's callbacks into plain ``(topic, payload)`` hand-offs and
never runs application logic on paho's network thread: a slow or failing
handler must not stall keepalives or kill the loop.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fedmq.runtime.connecting import (  # re-exported: the roles import them from here
    DEFAULT_BACKOFF,
    Backoff,
    BrokerUnavailable,
    BrokerUnreachable,
    LoginRefused,
    TlsMismatch,
    plain_on_tls,
    retry,
    speaks_tls,
    tls_failed,
    unreachable,
)
from fedmq.runtime.droplog import DropLog
from fedmq.runtime.mqtt_settings import MqttSettings  # re-exported: the roles import it from here
from fedmq.runtime.netloop import NetworkLoop, jittered

__all__ = ["AckHandler", "Backoff", "BrokerUnavailable", "BrokerUnreachable", "Inbox",
           "LoginRefused", "MqttLink", "MqttSettings", "NetworkLoop", "TlsMismatch",
           "topic_matches"]

log = logging.getLogger(__name__)
# CONNACK codes (as paho reports them, MQTT 5 numbering) that name a login problem.
_LOGIN_CODES = {133: "client id rejected", 134: "bad user name or password",
                135: "not authorised"}


Handler = Callable[[str, bytes], None]
# (topic, payload, ack, dup): ``ack()`` sends the QoS 1 PUBACK; the handler (or whoever it
# hands the message to) calls it once the message is safe (stored), from any thread. ``dup``:
# the broker says it may have sent this message before (a resend after a reconnect).
AckHandler = Callable[[str, bytes, Callable[[], None], bool], None]


def topic_matches(subscription: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT filter ``subscription`` (``+`` and ``#``)."""
    return bool(mqtt.topic_matches_sub(subscription, topic))


class Inbox:
    """Bounded hand-off from paho's network thread to a role's own thread.

    ``put`` is the MQTT message handler; it never blocks paho. Bounded in
    messages AND in payload bytes: a count alone lets a sender of large
    payloads hold gigabytes. Over either bound the message is dropped, counted
    per topic and logged at most once per few seconds per topic (``DropLog``),
    which beats unbounded memory on a 1 GB device.
    """

    def __init__(self, maxsize: int, *, max_bytes: int | None = None) -> None:
        if maxsize < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("an inbox needs room for at least one message and one byte")
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=maxsize)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self.drops = DropLog(log, level=logging.ERROR)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, topic: str, payload: bytes) -> None:
        size = len(payload)
        with self._lock:
            if self._max_bytes is not None and self._bytes + size > self._max_bytes:
                why = f"inbox holds {self._bytes} of {self._max_bytes} bytes"
            else:
                try:
                    self._queue.put_nowait((topic, payload))
                except queue.Full:
                    why = f"inbox full ({self._queue.maxsize} messages)"
                else:
                    self._bytes += size
                    return
        self.drops.drop(topic, why)

    def wake(self) -> None:
        """Wake a waiting ``get`` with the empty topic ("", b""): the owner stops.
        A full inbox needs no wake-up (its ``get`` returns at once)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(("", b""))

    def get(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """The next message, or None after ``timeout`` seconds (0: do not wait)."""
        try:
            item = self._queue.get_nowait() if timeout == 0 else self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._bytes -= len(item[1])
        return item


class _Driven:
    """A paho client whose socket a shared ``NetworkLoop`` drives (no thread of its own).

    paho reconnects by itself only in its own loop thread; here a lost connection
    is retried from the shared loop, with the same 1 to 30 s doubling backoff.
    """

    def __init__(self, client: mqtt.Client, network: NetworkLoop) -> None:
        self.client, self.network = client, network
        self.sock: Any = None
        self._retry_at: float | None = None
        self._delay = 1.0
        self._rng = random.Random()
        client.on_socket_open = lambda _c, _ud, sock: self._opened(sock)
        client.on_socket_close = lambda _c, _ud, sock: self._closed(sock)
        client.on_socket_register_write = lambda _c, _ud, _sock: network.want_write(self)

    def _opened(self, sock: Any) -> None:
        self.sock = sock
        self.network.socket_open(self, sock)

    def _closed(self, sock: Any) -> None:
        if self.sock is sock:
            self.sock = None
        self.network.socket_close(self, sock)

    def loop_read(self) -> int:
        return int(self.client.loop_read())

    def loop_write(self) -> int:
        return int(self.client.loop_write())

    def loop_misc(self) -> int:
        return int(self.client.loop_misc())

    def want_write(self) -> bool:
        return self.client.want_write()

    def connected(self) -> None:
        self._retry_at, self._delay = None, 1.0

    def lost(self) -> None:
        self._retry_at = time.monotonic() + jittered(self._delay, self._rng)
        self._delay = min(30.0, 2 * self._delay)

    def reconnect_due(self, now: float) -> bool:
        return self._retry_at is not None and now >= self._retry_at and self.sock is None

    def reconnect(self) -> None:
        self._retry_at = None
        try:
            self.client.reconnect()
        except (OSError, ssl.SSLError) as exc:
            log.warning("reconnect failed (%s); retrying in %.0f s", exc, self._delay)
            self.lost()


class MqttLink:
    """A connected paho client: subscribes on every (re)connect, reconnects with backoff."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        on_message: Handler,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
        clean_session: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        network: NetworkLoop | None = None,
        on_delivery: AckHandler | None = None,
    ) -> None:
        """``network``: drive the socket from that shared loop (a simulation's many agents
        of one process) instead of a paho loop thread of its own (a device).

        ``on_delivery`` replaces ``on_message`` with manual acknowledgements: paho then
        sends no PUBACK by itself (it would, as soon as the callback returns), so a QoS 1
        message is acknowledged only when the handler's ``ack`` says it is stored. An ack
        of a message from an earlier connection is not sent (the broker resends it)."""
        self.settings = settings
        self._on_message = on_message
        self._subscriptions = list(subscriptions)
        self._on_connect_hook = on_connect
        self._connected = threading.Event()
        self._closing = False
        # QoS 1 publishes the broker may not have acknowledged yet (see close).
        self._unacked: list[mqtt.MQTTMessageInfo] = []
        self._refused: tuple[int, str] | None = None  # CONNACK code and text
        self._dropped: str | None = None  # closed before any CONNACK
        self._ever_connected = False
        self._backoff = backoff
        self._on_delivery = on_delivery
        self._generation = 0  # connections so far: an ack belongs to one of them
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            # False: the broker queues QoS 1 messages for us while we are away
            # (a restarting aggregator must not miss updates sent meanwhile).
            clean_session=clean_session,
            manual_ack=on_delivery is not None,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set(
                ca_certs=settings.ca_file, certfile=settings.cert_file,
                keyfile=settings.key_file, tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        # Exponential backoff between reconnects so a fleet does not hammer a
        # rebooting gateway all at once.
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.connect_timeout = settings.connect_timeout
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        self._client = client
        self._driven = _Driven(client, network) if network is not None else None

    # paho callbacks: convert and hand off, nothing more
    def _handle_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                        _props: Any) -> None:
        if reason.is_failure:
            self._refused = (int(reason.value), str(reason))
            if self._ever_connected:  # a first connect reports it in connect()
                log.error("broker refused connection: %s", reason)
            return
        self._refused = None
        self._ever_connected = True
        self._generation += 1
        if self._driven is not None:
            self._driven.connected()
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos=qos)
        self._connected.set()
        log.info("connected to %s:%d", self.settings.host, self.settings.port)
        if self._on_connect_hook is not None:
            self._on_connect_hook()

    def _handle_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                           _props: Any) -> None:
        self._connected.clear()
        if not self._ever_connected:
            self._dropped = str(reason)
        elif reason.value != 0 and not self._closing:
            log.warning("lost connection to broker (%s); reconnecting with backoff", reason)
            if self._driven is not None:
                self._driven.lost()

    def _handle_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if self._on_delivery is not None:
                generation, mid, qos = self._generation, msg.mid, msg.qos
                self._on_delivery(msg.topic, bytes(msg.payload),
                                  lambda: self._ack(generation, mid, qos), bool(msg.dup))
                return
            self._on_message(msg.topic, bytes(msg.payload))
        except Exception:  # a handler bug must never kill paho's network thread
            log.exception("message handler failed on %s", msg.topic)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Add a subscription: made now if connected, and again on every reconnect."""
        self._subscriptions.append((topic, qos))
        if self._connected.is_set():
            self._client.subscribe(topic, qos=qos)

    def _ack(self, generation: int, mid: int, qos: int) -> None:
        if qos and generation == self._generation and self._connected.is_set():
            self._client.ack(mid, qos)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self) -> None:
        """One attempt: connect and wait for the CONNACK; raise a BrokerUnavailable saying why."""
        s = self.settings
        where = f"{s.host}:{s.port}"
        self._refused = self._dropped = None
        try:
            self._client.connect(s.host, s.port, keepalive=s.keepalive)
        except ssl.SSLError as exc:
            raise tls_failed(where, exc) from exc
        except OSError as exc:
            # A reset in the middle of our TLS handshake is a TLS mismatch, not a dead host.
            if s.tls and isinstance(exc, ConnectionResetError | ConnectionAbortedError):
                raise tls_failed(where, exc) from exc
            raise unreachable(where, exc, s.connect_timeout) from exc
        self._start_loop()
        deadline = time.monotonic() + s.connect_timeout
        while not self._connected.wait(0.05):
            if self._refused or self._dropped or time.monotonic() > deadline:
                self._stop_loop()
                raise self._failure(where)

    def _start_loop(self) -> None:
        if self._driven is None:
            self._client.loop_start()
        else:
            self._driven.network.add(self._driven)

    def _stop_loop(self) -> None:
        if self._driven is None:
            self._client.loop_stop()
        else:
            self._driven.network.remove(self._driven)

    def _failure(self, where: str) -> BrokerUnavailable:
        s = self.settings
        if self._refused is not None:
            code, text = self._refused
            if code in _LOGIN_CODES:
                who = f"user {s.username!r}" if s.username else "an anonymous client"
                return LoginRefused(f"broker {where} refused the login of {who}: {text}; check "
                                    f"[mqtt] username and password (and the broker's ACL)")
            return BrokerUnreachable(f"broker {where} refused the connection: {text}")
        if not s.tls and speaks_tls(s.host, s.port, min(3.0, s.connect_timeout)):
            return plain_on_tls(where)
        if self._dropped is not None:
            return BrokerUnreachable(f"broker {where} closed the connection before answering "
                                     f"MQTT ({self._dropped}); is it an MQTT port?")
        return BrokerUnreachable(f"broker {where} accepted the connection but sent no MQTT "
                                 f"answer within {s.connect_timeout:g} s")

    def connect_retrying(self, stop: threading.Event) -> bool:
        """Connect, retrying with jittered backoff until connected (True) or ``stop`` (False).

        For the first connection of a long-running role: the gateway may boot
        after the device. Reconnects after that are paho's (its own backoff).
        """
        s = self.settings
        return retry(self.connect, where=f"{s.host}:{s.port}", stop=stop,
                     attempts=s.connect_attempts, backoff=self._backoff)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                timeout: float = 10.0, wait: bool = True) -> bool:
        """Publish; True once the broker acknowledged (QoS 1) or the packet left (QoS 0).

        While disconnected paho keeps QoS 1 messages and sends them after the
        reconnect, so False means "not yet confirmed", not "lost". ``wait=False``
        is for paho's own callbacks, which must never block on an acknowledgement.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            if len(self._unacked) >= 64:
                self._unacked = [i for i in self._unacked if not i.is_published()]
            self._unacked.append(info)
        if not wait:
            return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            log.warning("not connected: %s queued until the broker is back", topic)
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("publish to %s failed: %s", topic, exc)
            return False
        return info.is_published()

    def close(self, *, graceful: bool = True, settle: float = 5.0) -> None:
        """Disconnect; ``graceful=False`` drops the socket so the broker fires the Last Will.

        Graceful: first wait (``settle`` seconds at most) for the broker to acknowledge
        our QoS 1 publishes. A client that hangs up while its PUBACK is still to be
        written makes Mosquitto (2.0.0-2.0.21, eclipse-mosquitto#3253) log "disconnected
        due to out of memory" (a failed PUBACK write is reported as MOSQ_ERR_NOMEM): 770
        such lines when 5,000 simulated agents said "offline" at once, each after a 2 s wait.
        """
        self._closing = True
        if graceful:
            end = time.monotonic() + settle
            for info in self._unacked:
                left = end - time.monotonic()
                if left <= 0 or not self._connected.is_set():
                    break
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not info.is_published():
                    try:
                        info.wait_for_publish(left)
                    except (RuntimeError, ValueError):
                        break
            self._client.disconnect()
        else:
            sock = self._client.socket()
            if sock is not None:
                sock.close()
        self._stop_loop()
