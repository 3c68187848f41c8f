"""What fedmq adds to amqtt 0.12: a complete topic ACL, a payload cap, required client certs.

Only the embedded broker imports this module (amqtt is a gateway-only dependency).
Each addition closes a gap found by reading amqtt's source:

- ``TopicAccessControlListPlugin`` already checks ``subscribe-acl`` and
  ``receive-acl``, but its ``Config`` dataclass only declares ``publish_acl``
  and the deprecated ``acl``, so the plugin-dictionary configuration cannot set
  a receive list. ``FleetAclPlugin`` declares all three. The receive check
  matters because a client that reconnects with another client's id and
  ``clean_session = false`` inherits that client's subscriptions.
- A Last Will is published when a client drops without any topic check, so an
  agent could leave a retained "round" behind. ``WillAclPlugin`` refuses the
  CONNECT instead.
- amqtt has no packet or payload size limit and buffers a whole PUBLISH (up to
  256 MB) before any plugin sees it. ``FedmqBroker`` refuses a payload before
  reading it and closes the connection, as Mosquitto's ``max_packet_size`` does.
- With a CA file amqtt verifies client certificates only if a client sends one
  (``CERT_OPTIONAL``); ``FedmqBroker`` makes them required.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import PluginInitError
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin
from amqtt.session import Session

from broker.acl import ANONYMOUS
from protocol.errors import FedmqError

log = logging.getLogger(__name__)

# Dotted paths for amqtt's ``plugins`` configuration dictionary.
ACL_PLUGIN = f"{__name__}.FleetAclPlugin"
WILL_PLUGIN = f"{__name__}.WillAclPlugin"


class FleetAclPlugin(TopicAccessControlListPlugin):
    """amqtt's own ACL plugin with every list it checks configurable."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        # amqtt allows every publish when the publish list is empty (compatibility
        # with hbmqtt); an ACL that allows everything must never pass silently.
        if not self.config.publish_acl or not self.config.subscribe_acl:
            raise PluginInitError("FleetAclPlugin needs non-empty publish and subscribe lists")

    @dataclass
    class Config:
        publish_acl: dict[str, list[str]] = field(default_factory=dict)
        subscribe_acl: dict[str, list[str]] = field(default_factory=dict)
        receive_acl: dict[str, list[str]] = field(default_factory=dict)


class WillAclPlugin(BaseAuthPlugin):
    """Refuse a CONNECT whose Last Will goes to a topic its user may not publish to."""

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.will_flag:
            return None  # no opinion: the other plugins decide
        user = session.username or ANONYMOUS
        allowed = self.config.publish_acl.get(user, [])
        topic = session.will_topic or ""
        if any(TopicAccessControlListPlugin.topic_ac(topic, a) for a in allowed):
            return None
        log.warning("refused %r (user %r): Last Will on %r is outside its publish ACL",
                    session.client_id, user, topic)
        return False

    @dataclass
    class Config:
        publish_acl: dict[str, list[str]] = field(default_factory=dict)


class PayloadTooLarge(FedmqError):
    """A client sent a PUBLISH payload over the broker's cap; its connection is closed."""


class _CappedReader(ReaderAdapter):
    """Refuses any single read larger than the cap.

    amqtt reads every field of every packet through ``read(n)``; all of them
    are at most 65535 bytes (2-byte length prefixes) except a PUBLISH payload,
    which it reads with one call of exactly the payload's length. So with a cap
    of at least 64 KiB, ``n > cap`` happens exactly for an oversize payload,
    and before a byte of it is buffered.
    """

    def __init__(self, inner: ReaderAdapter, cap: int, peer: str) -> None:
        self._inner, self._cap, self._peer = inner, cap, peer

    async def read(self, n: int = -1) -> bytes:
        if n > self._cap:
            log.warning("closing connection from %s: PUBLISH payload of %d bytes is over "
                        "max_payload_bytes (%d)", self._peer, n, self._cap)
            raise PayloadTooLarge(f"payload of {n} bytes over the cap of {self._cap}")
        data: bytes = await self._inner.read(n)
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _SnapshotDict(dict[str, Any]):
    """A dict whose iteration walks a snapshot of its keys.

    amqtt 0.12 iterates its subscription table across ``await``s when a client
    connects; another client subscribing meanwhile raised "dictionary changed
    size during iteration" and dropped the connecting client.
    """

    def __iter__(self) -> Any:
        return iter(list(super().keys()))


class FedmqBroker(Broker):
    """amqtt's broker with a payload cap on TCP listeners, required client certificates,
    and retained messages delivered only to their own subscribers and within the ACL."""

    def __init__(self, config: dict[str, Any], *, max_payload_bytes: int) -> None:
        super().__init__(config)
        self._max_payload_bytes = max_payload_bytes
        table: dict[str, Any] = self.__dict__["_subscriptions"]
        self._subscriptions = _SnapshotDict(table)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        # amqtt calls this on every CONNECT for the filters of ALL clients and never
        # checks the receive ACL: an agent would read every retained status (or a
        # retained update) just by connecting. Deliver only for the session's own
        # filters, and only topics the ACL lets it receive.
        topic_filter, qos = subscription
        own = any(s.client_id == session.client_id
                  for s, _ in self._subscriptions.get(topic_filter, []))
        handler = self._get_handler(session)
        if not own or handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and await self._topic_filtering(
                    session, topic, Action.RECEIVE):
                tasks.append(asyncio.ensure_future(handler.mqtt_publish(
                    retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)))
        if tasks:
            await asyncio.wait(tasks)

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        peer = writer.get_extra_info("peername")
        capped = _CappedReader(StreamReaderAdapter(reader), self._max_payload_bytes,
                               f"{peer[0]}:{peer[1]}" if peer else "?")
        await self.external_connected(capped, StreamWriterAdapter(writer), listener_name)

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        if listener.get("cafile"):
            context.verify_mode = ssl.CERT_REQUIRED
        return context
