"""The relays of ``fedmq bench-relay``, each in a spawned process of its own.

A relay sums 500 devices' updates on one core while the agents train on the
other: in its own process it shares no GIL with the top aggregator, as on a
real intermediate gateway, and its peak RSS is measured on its own.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from fedmq.relay.config import RelayConfig
from fedmq.simulation.shards import peak_rss_bytes


def _relay_process(config: RelayConfig, conn: Any) -> None:
    from fedmq.relay.service import Relay

    logging.basicConfig(level=logging.WARNING,
                        format=f"%(levelname)s {config.relay_id} %(name)s: %(message)s")
    relay = Relay(config)
    thread = threading.Thread(target=relay.run, name=config.relay_id, daemon=True)
    thread.start()
    conn.send(("started",))
    conn.recv()  # stop
    relay.stop()
    thread.join(10)
    conn.send(("done", peak_rss_bytes(), len(relay.forwarded)))


@contextlib.contextmanager
def relay_processes(configs: Sequence[RelayConfig], out: dict[str, int]) -> Iterator[None]:
    """Each relay in a spawned process; ``out`` gets their summed peak RSS and partials."""
    ctx = multiprocessing.get_context("spawn")
    started = []
    for config in configs:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_relay_process, args=(config, theirs),
                           name=f"fedmq-{config.relay_id}", daemon=True)
        proc.start()
        started.append((proc, mine))
    try:
        for _proc, conn in started:
            conn.recv()  # started
        yield
    finally:
        for proc, conn in started:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            if conn.poll(30):
                _done, rss, partials = conn.recv()
                out["rss"] = out.get("rss", 0) + rss
                out["partials"] = out.get("partials", 0) + partials
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
