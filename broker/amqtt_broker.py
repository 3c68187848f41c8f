"""``FedmqBroker``: amqtt 0.12's broker with its connection handling made safe for a LAN.

Only the embedded broker imports this module (amqtt is a gateway-only dependency).
What amqtt gets wrong, and what this subclass does instead (the upstream bugs
are recorded in the issue note):

- ``Broker._initialize_client_session`` copies a new CONNECT's will and
  credentials into the existing session of that client id, and deletes the
  old session of a clean-session client, before ``_handle_client_session``
  authenticates it; that method then takes over (kicks) the connected client
  even when authentication fails. Here a CONNECT is authenticated on its own
  fresh session first; a refused client gets its CONNACK and is closed
  without touching any session, will, subscription, queue or connection.
- Any client may resume, replace or delete any session by choosing its client
  id. With a password file, sessions live under the login (``session_key``):
  one user reaches only its own sessions.
- Messages queued for an offline session are delivered on reconnect without
  the receive ACL (and flagged as retained); the queue has no bound.
- A socket that never sends CONNECT is kept forever, and ``max_connections``
  counts it, so idle sockets lock every client out. Here CONNECT must arrive
  within ``connect_timeout`` seconds, the oldest idle socket is closed when too
  many wait, and ``max_connections`` counts logged-in clients only (one over is
  refused with "server unavailable" instead of waiting without an answer).
- No packet size or subscription limits (see ``broker.amqtt_reader`` and
  ``broker.amqtt_delivery``), and a client silent for longer than its
  keep-alive is never dropped.
- With a CA file client certificates are optional (``CERT_OPTIONAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker, Server
from amqtt.contexts import ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, SERVER_UNAVAILABLE, ConnackPacket
from amqtt.mqtt.constants import QOS_0
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

from fedmq.broker.amqtt_delivery import DeliveryRules
from fedmq.broker.amqtt_reader import FramedReader
from fedmq.broker.limits import ConnectionLimits, PendingConnections, session_key
from fedmq.protocol.errors import FedmqError

log = logging.getLogger(__name__)

_TAKEOVER_WAIT = 5.0  # seconds for a replaced connection to finish its disconnect
_CONNECTION_ERRORS = (AMQTTError, MQTTError, NoDataError, FedmqError, OSError,
                      asyncio.IncompleteReadError)


class _SnapshotDict(dict[str, Any]):
    """A dict whose iteration walks a snapshot of its keys.

    amqtt 0.12 iterates its subscription table across ``await``s when a client
    connects; another client subscribing meanwhile raised "dictionary changed
    size during iteration" and dropped the connecting client.
    """

    def __iter__(self) -> Any:
        return iter(list(super().keys()))

    def items(self) -> Any:
        # amqtt's broadcast walks items() and each filter's subscriber list across the
        # receive ACL's awaits: a snapshot of both (see broker.amqtt_delivery).
        return [(key, list(subscribers)) for key, subscribers in super().items()]


class _Handler(BrokerProtocolHandler):
    _closing: asyncio.Task[None] | None = None

    def handle_read_timeout(self) -> None:
        # amqtt reads with the keep-alive as timeout and then does nothing: a client
        # whose link died without a FIN stayed "connected" (its will never fired).
        if self.session is not None:
            log.warning("closing connection of %s: nothing received within 1.5 times its "
                        "keep-alive", self.session.client_id)
        self._closing = asyncio.ensure_future(self.handle_connection_closed())


class FedmqBroker(DeliveryRules):
    """amqtt's broker with authentication first, sessions bound to logins, the ACL on
    every delivery, CONNECT timeouts, size caps and required client certificates."""

    def __init__(self, config: dict[str, Any], *, limits: ConnectionLimits) -> None:
        super().__init__(config)
        self._limits = limits
        self._subscriptions = _SnapshotDict(self.__dict__["_subscriptions"])
        self._pending = PendingConnections(max_pending=limits.max_pending,
                                           max_per_source=limits.max_pending_per_source)
        self._pending_writers: dict[object, WriterAdapter] = {}
        self._connection_done: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._queue_full_logged: set[str] = set()
        # Told when a connection ends: broker.memory collects what it left in cycles.
        self.connection_ended: Callable[[], None] | None = None

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for messages already accepted to be broadcast; return
        how many are still queued. amqtt's shutdown drops its broadcast queue with a
        warning ("N messages not broadcasted"): at the end of a 1,000-agent simulation
        those were the agents' last statuses, published as they disconnected."""
        queue = self._broadcast_queue  # amqtt's own queue: nothing else exposes its depth
        deadline = asyncio.get_running_loop().time() + timeout
        while not queue.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return int(queue.qsize())

    # --- connections ---------------------------------------------------------------------

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        peer = writer.get_extra_info("peername")
        framed = FramedReader(StreamReaderAdapter(reader),
                              max_payload_bytes=self._limits.max_payload_bytes,
                              max_control_bytes=self._limits.max_control_packet_bytes,
                              peer=f"{peer[0]}:{peer[1]}" if peer else "?")
        try:
            await self._client_connected(listener_name, framed, StreamWriterAdapter(writer))
        finally:
            if self.connection_ended is not None:
                self.connection_ended()

    async def _client_connected(self, listener_name: str, reader: Any,
                                writer: WriterAdapter) -> None:
        server = self._servers.get(listener_name)
        peer = writer.get_peer_info()
        if server is None or peer is None:
            await _close(writer)
            return
        where = f"{peer[0]}:{peer[1]}"
        connected = await self._read_connect(reader, writer, peer[0], where)
        if connected is None:
            return
        handler, incoming = connected
        if not await self._admit(incoming, listener_name, server, writer, where):
            return
        await server.acquire_connection()  # does not wait: _admit checked the count
        try:
            await self._take_over(incoming.client_id or "")
            session = await self._adopt_session(incoming)
            await self._serve(reader, writer, session, handler)
        except _CONNECTION_ERRORS as exc:
            log.warning("connection from %s (%s) ended: %s", where, incoming.client_id, exc)
        finally:
            server.release_connection()

    async def _read_connect(self, reader: Any, writer: WriterAdapter, address: str,
                            where: str) -> tuple[_Handler, Session] | None:
        token = object()
        self._pending_writers[token] = writer
        for old in self._pending.admit(token, address):
            log.warning("closing an idle connection from %s: more than %d connections from "
                        "it (or %d in all) are waiting for their CONNECT", address,
                        self._limits.max_pending_per_source, self._limits.max_pending)
            self._spawn(_close(self._pending_writers.pop(old)))
        try:
            handler, session = await asyncio.wait_for(
                _Handler.init_from_connect(reader, writer, self.plugins_manager),
                self._limits.connect_timeout)
        except asyncio.TimeoutError:
            log.warning("closing connection from %s: no CONNECT within %g s", where,
                        self._limits.connect_timeout)
            await _close(writer)
            return None
        except _CONNECTION_ERRORS as exc:
            log.info("closing connection from %s before CONNECT completed: %s", where,
                     exc or type(exc).__name__)
            await _close(writer)
            return None
        finally:
            self._pending.release(token)
            self._pending_writers.pop(token, None)
        if isinstance(reader, FramedReader) and not reader.between_packets:
            log.warning("closing connection from %s: CONNECT longer than its fields", where)
            await _close(writer)
            return None
        if not session.client_id:
            session.client_id = gen_client_id()
        if session.keep_alive > 0:  # MQTT-3.1.2-24: drop after 1.5 times the keep-alive
            session.keep_alive += (session.keep_alive + 1) // 2
        return handler, session

    async def _admit(self, incoming: Session, listener_name: str, server: Server,
                     writer: WriterAdapter, where: str) -> bool:
        """Authenticate on the fresh session; refuse without touching any other state."""
        ok = await self._authenticate(incoming, self.listeners_config[listener_name])
        code = None
        if not ok:
            log.warning("refused CONNECT from %s (client id %r, user %r): not authorized",
                        where, incoming.client_id, incoming.username)
            code = NOT_AUTHORIZED
        elif 0 < server.max_connections <= server.conn_count:
            log.warning("refused CONNECT from %s (client id %r): max_connections (%d) reached",
                        where, incoming.client_id, server.max_connections)
            code = SERVER_UNAVAILABLE
        if code is not None:
            with contextlib.suppress(OSError):
                await ConnackPacket.build(0, code).to_stream(writer)
            await _close(writer)
            return False
        if self._limits.bind_client_id:
            incoming.client_id = session_key(incoming.username, incoming.client_id or "")
        return True

    async def _take_over(self, key: str) -> None:
        """Close the connection that holds session ``key`` and wait until it is gone."""
        existing = self._sessions.get(key)
        if existing is None or not existing[0].transitions.is_connected():
            return
        log.info("client %s connected again: closing its previous connection", key)
        done = self._connection_done.get(key)
        await existing[1].handle_connection_closed()
        if done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), _TAKEOVER_WAIT)

    async def _adopt_session(self, incoming: Session) -> Session:
        key = incoming.client_id or ""
        if incoming.clean_session:
            await self._delete_session(key)
            incoming.parent = 0
            return incoming
        existing = self._sessions.get(key)
        if existing is None:
            incoming.parent = 0
            return incoming
        session = existing[0]
        for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                     "keep_alive", "username", "password", "remote_address", "remote_port",
                     "ssl_object"):
            setattr(session, name, getattr(incoming, name))
        session.parent = 1
        return session

    async def _serve(self, reader: Any, writer: WriterAdapter, session: Session,
                     handler: BrokerProtocolHandler) -> None:
        """amqtt's ``_handle_client_session`` after a successful authentication."""
        key = session.client_id or ""
        done = self._connection_done[key] = asyncio.Event()
        try:
            try:
                session.transitions.connect()
            except Exception:  # the replaced connection did not let go in time
                log.warning("refused CONNECT of %s: its previous connection is still open", key)
                with contextlib.suppress(OSError):
                    await ConnackPacket.build(0, SERVER_UNAVAILABLE).to_stream(writer)
                await _close(writer)
                return
            self._queue_full_logged.discard(key)
            handler.attach(session, reader, writer)
            self._sessions[key] = (session, handler)
            await handler.mqtt_connack_authorize(True)
            await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED, client_id=key,
                                                  client_session=session)
            await handler.start()
            await self._publish_session_retained_messages(session)
            for topic in self._subscriptions:
                await self._publish_retained_messages_for_subscription((topic, QOS_0), session)
            await self._client_message_loop(session, handler)
        finally:
            done.set()
            if self._connection_done.get(key) is done:
                del self._connection_done[key]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- listeners -----------------------------------------------------------------------

    async def _create_server_instance(self, listener_name: str, listener_type: ListenerType,
                                      address: str | None, port: int,
                                      ssl_context: ssl.SSLContext | None) -> Any:
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(listener_name, listener_type,
                                                         address, port, ssl_context)
        # A TLS handshake that never completes is bounded like a missing CONNECT.
        return await asyncio.start_server(
            partial(self.stream_connected, listener_name=listener_name), address, port,
            reuse_address=True, ssl=ssl_context,
            ssl_handshake_timeout=self._limits.connect_timeout if ssl_context else None)

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        if listener.get("cafile"):
            context.verify_mode = ssl.CERT_REQUIRED
        return context


async def _close(writer: WriterAdapter) -> None:
    with contextlib.suppress(Exception):
        await writer.close()
