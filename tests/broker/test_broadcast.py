"""Broadcasts while other clients subscribe and unsubscribe (broker.amqtt_delivery)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path

from mqtt_support import USERS

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.protocol.topics import Topics

T = Topics("plant")
MESSAGES = 300
WATCHERS = 4


def test_subscribing_while_messages_are_broadcast_loses_nothing(password_file: Path, probe,
                                                                 caplog):
    """amqtt 0.12's broadcast walked the subscription table across awaits (the ACL
    check): a monitoring client subscribing meanwhile raised "dictionary changed size
    during iteration" in a task nobody awaited, and the message went to no one after."""
    settings = BrokerSettings(port=free_port(), password_file=str(password_file),
                              allow_anonymous=False, acl=True, fleet="plant")
    caplog.set_level(logging.WARNING)
    with EmbeddedBroker(settings):
        port = settings.port
        login = {"username": "aggregator", "password": USERS["aggregator"]}
        watchers = [probe(port, f"watch-{i}", **login) for i in range(WATCHERS)]
        for w in watchers:
            assert w.connect() and w.subscribe(T.status_filter)
        churn = probe(port, "monitor", **login)
        assert churn.connect()
        sender = probe(port, "dev-a", username="dev-a", password=USERS["dev-a"])
        assert sender.connect()
        done = threading.Event()

        def subscribe_and_unsubscribe() -> None:
            n = 0
            while not done.is_set():  # each a new filter: a new key in amqtt's table
                n += 1
                assert churn.subscribe(T.status(f"dev-{n}"))
                churn.client.unsubscribe(T.status(f"dev-{n}"))

        thread = threading.Thread(target=subscribe_and_unsubscribe)
        thread.start()
        try:
            for i in range(MESSAGES):
                sender.publish(T.status("dev-a"), f"{i}".encode(), qos=0)
                time.sleep(0.002)
        finally:
            time.sleep(0.5)
            done.set()
            thread.join(10)
        expected = [f"{i}".encode() for i in range(MESSAGES)]
        for w in watchers:
            assert w.wait(lambda w=w: len(w.got(T.status("dev-a"))) >= MESSAGES, 10), (
                f"{w.client._client_id!r} got {len(w.got(T.status('dev-a')))} of {MESSAGES}")
            assert w.got(T.status("dev-a")) == expected
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [p for p in problems if "never retrieved" in p or "changed size" in p]
    assert problems == []


def test_unsubscribing_leaves_no_empty_entry_behind(broker_port, probe):
    """amqtt kept an empty entry per filter ever unsubscribed: a client cycling
    through new filters grew the broker's table without bound."""
    from fedmq.broker.amqtt_broker import FedmqBroker

    (broker,) = [o for o in gc.get_objects() if isinstance(o, FedmqBroker)
                 and o.listeners_config["default"].get("bind", "").endswith(f":{broker_port}")]
    client = probe(broker_port, "cycler")
    assert client.connect()
    for n in range(50):
        assert client.subscribe(f"t/{n}")
        client.client.unsubscribe(f"t/{n}")
    assert client.subscribe("t/kept")  # after every UNSUBSCRIBE before it was handled
    assert set(broker.subscriptions) == {"t/kept"}
