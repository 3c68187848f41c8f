"""``fedmq simulate --dashboard``: the live page of the simulated fleet while it runs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from fedmq.dashboard.config import DashboardConfig
from fedmq.dashboard.service import Dashboard
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings


@contextlib.contextmanager
def live_dashboard(topics: Topics, aggregator_key: str, mqtt: MqttSettings, port: int,
                   say: Callable[[str], None]) -> Iterator[Dashboard]:
    """Serve the page on 127.0.0.1:``port`` (0: a free port) for as long as the block runs."""
    dashboard = Dashboard(DashboardConfig(topics=topics, aggregator_signing_key=aggregator_key,
                                          mqtt=mqtt, port=port))
    server = dashboard.serve()
    say(f"dashboard: {server.url} (live while the fleet runs; Prometheus: {server.url}metrics)")
    stop = threading.Event()
    thread = threading.Thread(target=dashboard.run, args=(stop,), name="dashboard",
                              daemon=True)
    thread.start()
    try:
        yield dashboard
    finally:
        stop.set()
        thread.join(10)
