"""The cap on sockets waiting for their CONNECT from one address, and raising it.

Every agent of a simulation connects from 127.0.0.1: with the default cap (64) a
connection storm of 200 agents had genuine agents closed mid-CONNECT (82 in one run).
"""

from __future__ import annotations

import socket
import time

import pytest

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from tests.support import wait_until


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("cap, first_closed", [(None, True), (100, False)])
def test_waiting_sockets_over_the_per_source_cap_close_the_oldest(cap, first_closed):
    port = free_port()
    # A CONNECT timeout far beyond the test: only the cap may close a socket, however
    # slowly a loaded machine runs it.
    extra = {"connect_timeout": 120.0} if cap is None else {
        "max_pending_per_source": cap, "max_pending": cap, "connect_timeout": 120.0}
    with EmbeddedBroker(BrokerSettings(port=port, **extra)):  # type: ignore[arg-type]
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(70)]
        try:
            if first_closed:
                wait_until(lambda: _closed(socks[0]), "the oldest waiting socket closed", 5)
            else:
                end = time.monotonic() + 1.0  # the default cap closed it within ms
                while time.monotonic() < end:
                    assert not _closed(socks[0]) and not _closed(socks[-1])
        finally:
            for s in socks:
                s.close()
