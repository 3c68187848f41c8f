"""Subscription caps and ACL-checked deliveries for ``broker.amqtt_broker.FedmqBroker``.

amqtt 0.12 stores every filter a SUBSCRIBE names (a million of them, if sent),
hands a connecting client the retained messages of every client's filters
without the receive ACL, and delivers an offline session's queued messages on
reconnect without the receive ACL, flagged as retained and from an unbounded
queue. ``DeliveryRules`` overrides those four steps.

amqtt's broadcast of one message (``_run_broadcast``) walks the subscription table
and each filter's subscriber list across awaits (the receive ACL check yields to the
event loop). A client subscribing to a new filter meanwhile raised "dictionary changed
size during iteration" in the broadcast task, which amqtt's broadcast loop never awaits
("Task exception was never retrieved"): the message went to no subscriber after that
point; one unsubscribing meanwhile shifted the list and skipped the next subscriber.
FedmqBroker's table (broker.amqtt_broker._SnapshotDict) hands that loop snapshots
instead. No upstream report was found (amqtt issues searched, 2026-12); amqtt's main
branch (175202e, 2026-08) still iterates the live table. Unsubscribing also left an
empty entry per filter in the table for good (a client cycling through new filters grew
it without bound): ``_handle_unsubscription`` drops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from fedmq.broker.limits import ConnectionLimits

log = logging.getLogger(__name__)


class DeliveryRules(Broker):
    """amqtt's broker with capped subscriptions and the receive ACL on every delivery."""

    _limits: ConnectionLimits
    _queue_full_logged: set[str]

    async def _handle_subscription(self, client_session: Session,
                                   handler: BrokerProtocolHandler,
                                   subscribe_waiter: asyncio.Future[Any]) -> None:
        filters = [f for f, _ in subscribe_waiter.result().topics]
        held = {f for f, subs in self._subscriptions.items()
                if any(s.client_id == client_session.client_id for s, _ in subs)}
        problem = None
        if len(filters) > self._limits.max_filters_per_subscribe:
            problem = (f"SUBSCRIBE with {len(filters)} filters (at most "
                       f"{self._limits.max_filters_per_subscribe})")
        elif len(held | set(filters)) > self._limits.max_filters_per_session:
            problem = (f"more than {self._limits.max_filters_per_session} subscriptions in "
                       f"one session")
        if problem is not None:
            log.warning("closing connection of %s (from %s): %s", client_session.client_id,
                        client_session.remote_address, problem)
            await handler.handle_connection_closed()
            return
        await super()._handle_subscription(client_session, handler, subscribe_waiter)

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

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Messages queued while the session was offline: amqtt sends them without the
        # receive ACL and with the retain flag set (they are not retained messages).
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if not await self._topic_filtering(session, queued.topic, Action.RECEIVE):
                log.info("dropped a message queued for %s on %s: outside its receive ACL",
                         session.client_id, queued.topic)
                continue
            tasks.append(asyncio.ensure_future(handler.mqtt_publish(
                queued.topic, queued.data, queued.qos, retain=False)))
        if tasks:
            await asyncio.wait(tasks)

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int,
                                        target_session: Session) -> None:
        if target_session.retained_messages.qsize() >= self._limits.max_queued_messages:
            key = target_session.client_id or ""
            if key not in self._queue_full_logged:
                self._queue_full_logged.add(key)
                log.warning("offline session %s has %d queued messages: dropping new ones "
                            "until it reconnects", key, self._limits.max_queued_messages)
            return
        await target_session.retained_messages.put(RetainedApplicationMessage(
            broadcast["session"], broadcast["topic"], broadcast["data"], qos))

    async def _handle_unsubscription(self, client_session: Session,
                                     handler: BrokerProtocolHandler,
                                     unsubscribe_waiter: asyncio.Future[Any]) -> None:
        await super()._handle_unsubscription(client_session, handler, unsubscribe_waiter)
        for topic_filter in unsubscribe_waiter.result().topics:
            if not self._subscriptions.get(topic_filter, True):
                del self._subscriptions[topic_filter]
