"""Many MQTT links driven by ONE shared network thread (runtime.netloop): connect,
subscribe, deliver QoS 1 both ways, keep alive, reconnect after the broker restarts."""

from __future__ import annotations

import threading

import pytest
from support import wait_until

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.runtime.transport import Inbox, MqttLink, MqttSettings, NetworkLoop

N = 30


def _links(port: int, network: NetworkLoop, n: int = N, keepalive: int = 30
           ) -> tuple[list[MqttLink], list[Inbox]]:
    inboxes = [Inbox(100) for _ in range(n)]
    links = [MqttLink(MqttSettings(port=port, keepalive=keepalive), client_id=f"driven-{i}",
                      on_message=box.put, subscriptions=[("t/all", 1)], network=network)
             for i, box in enumerate(inboxes)]
    return links, inboxes


@pytest.fixture
def network():
    loop = NetworkLoop()
    yield loop
    loop.stop()


def test_thirty_links_share_one_network_thread_and_deliver_both_ways(network):
    port = free_port()
    with EmbeddedBroker(BrokerSettings(port=port)):
        before = threading.active_count()
        links, inboxes = _links(port, network)
        for link in links:
            link.connect()
        # paho's own loop would add a thread per link (30); the shared loop adds none
        assert threading.active_count() - before <= 1
        probe_box = Inbox(1000)
        probe = MqttLink(MqttSettings(port=port), client_id="probe", on_message=probe_box.put,
                         subscriptions=[("t/up/#", 1)])
        probe.connect()
        try:
            wait_until(lambda: all(link.connected for link in links), "all links connected")
            # the subscription is on its way after CONNACK: a retained message arrives anyway
            assert probe.publish("t/all", b"hello", retain=True)
            for box in inboxes:
                assert box.get(timeout=10) == ("t/all", b"hello")
            # publishing from many threads at once through the one loop: every PUBACK comes
            acked: list[bool] = []
            threads = [threading.Thread(target=lambda i=i, link=link: acked.append(
                link.publish(f"t/up/{i}", b"x" * 5000))) for i, link in enumerate(links)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert acked == [True] * N
            got = {probe_box.get(timeout=10) for _ in range(N)}
            assert got == {(f"t/up/{i}", b"x" * 5000) for i in range(N)}
        finally:
            probe.close()
            for link in links:
                link.close()


@pytest.mark.slow
def test_idle_driven_links_keep_alive_past_one_and_a_half_keepalives(network):
    port = free_port()
    links, _ = _links(port, network, n=5, keepalive=5)
    with EmbeddedBroker(BrokerSettings(port=port)):
        for link in links:
            link.connect()
        lost = threading.Event()
        # without PINGREQs the broker closes an idle client after 1.5 keepalives (7.5 s)
        assert not lost.wait(9.0)
        assert all(link.connected for link in links)
        for link in links:
            link.close()


def test_driven_links_reconnect_by_themselves_after_the_broker_restarts(network):
    port = free_port()
    links, _ = _links(port, network, n=5, keepalive=5)
    with EmbeddedBroker(BrokerSettings(port=port)):
        for link in links:
            link.connect()
        wait_until(lambda: all(link.connected for link in links), "connected")
    # the broker went away: every link notices, then comes back by itself
    wait_until(lambda: not any(link.connected for link in links), "links to notice", timeout=20)
    with EmbeddedBroker(BrokerSettings(port=port)):
        wait_until(lambda: all(link.connected for link in links), "links to reconnect",
                   timeout=30)
    for link in links:
        link.close()
