"""Fixtures for fleets behind a broker with logins and a topic ACL: plain MQTT clients.

A ``FleetClient`` logs in as one fleet user and can do exactly what that user
may: the aggregator's user sees every update (as the aggregator would), an
agent's user sees the round announcements. Tests use them as the honest
parties' witnesses and as attackers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from mqtt_support import FleetClient


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
