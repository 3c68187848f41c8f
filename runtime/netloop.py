"""One network thread for many MQTT clients of one process (a simulated fleet).

A device runs one agent and paho's own loop thread. A simulation runs hundreds
of agents per process: a paho loop thread each (plus its select() waking every
second) starved the threads that must answer keep-alives on 2 cores, and the
broker dropped them. Here ONE thread selects over all sockets and drives each
client through paho's external-loop API (``loop_read``/``loop_write``/
``loop_misc``). No paho import: ``runtime.transport`` wires a paho client to it
through the small ``LoopClient`` protocol.

Only this thread touches the selector: other threads (an agent publishing, paho
opening a socket inside ``connect``) queue a request and wake it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any, Protocol

log = logging.getLogger(__name__)

MISC_INTERVAL = 1.0  # seconds between keep-alive checks (paho's own loop uses 1 s too)


class LoopClient(Protocol):
    """What the loop needs of a client (``runtime.transport`` adapts a paho client)."""

    def loop_read(self) -> int: ...
    def loop_write(self) -> int: ...
    def loop_misc(self) -> int: ...
    def want_write(self) -> bool: ...
    def reconnect_due(self, now: float) -> bool: ...
    def reconnect(self) -> None: ...


class NetworkLoop:
    """Drives the sockets of many clients on one daemon thread."""

    def __init__(self, name: str = "fedmq-network") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._requests: deque[tuple[str, Any, Any]] = deque()
        self._clients: set[LoopClient] = set()
        self._writing: set[LoopClient] = set()  # registered for EVENT_WRITE too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # called from any thread -------------------------------------------------
    def _request(self, op: str, client: Any, sock: Any = None) -> None:
        self._requests.append((op, client, sock))
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending
            self._wake_w.send(b"x")

    def add(self, client: LoopClient) -> None:
        """Keep ``client`` alive (keep-alives, reconnects) from now on."""
        self._request("add", client)

    def remove(self, client: LoopClient) -> None:
        self._request("remove", client)

    def socket_open(self, client: LoopClient, sock: Any) -> None:
        self._request("open", client, sock)

    def socket_close(self, client: LoopClient, sock: Any) -> None:
        self._request("close", client, sock)

    def want_write(self, client: LoopClient) -> None:
        self._request("write", client)

    def stop(self) -> None:
        self._stop.set()
        self._request("noop", None)
        self._thread.join(5)

    # the loop thread ---------------------------------------------------------
    def _apply(self, pending_writes: set[LoopClient]) -> None:
        while self._requests:
            op, client, sock = self._requests.popleft()
            if op == "add":
                self._clients.add(client)
            elif op == "remove":
                self._clients.discard(client)
            elif op == "open":
                self._register(client, sock)
            elif op == "close":
                self._unregister(sock)
                self._writing.discard(client)
            elif op == "write":
                pending_writes.add(client)

    def _register(self, client: LoopClient, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            old = self._selector.get_map().get(sock.fileno())
            if old is not None:  # a closed socket's number, reused before its close request
                self._selector.unregister(old.fileobj)
        with contextlib.suppress(ValueError, OSError):
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _unregister(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)

    def _set_writing(self, client: LoopClient, sock: Any, on: bool) -> None:
        if on == (client in self._writing):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self._selector.modify(sock, events, client)
        except (KeyError, ValueError, OSError):
            return
        (self._writing.add if on else self._writing.discard)(client)

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL
        while not self._stop.is_set():
            writes: set[LoopClient] = set()
            try:
                ready = self._selector.select(max(0.0, next_misc - time.monotonic()))
            except OSError as exc:  # a socket closed under us: drop it on the next pass
                log.debug("select failed: %s", exc)
                ready = []
            for key, events in ready:
                client = key.data
                if client is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(4096)
                    continue
                if events & selectors.EVENT_READ:
                    self._call(client.loop_read)
                if events & selectors.EVENT_WRITE:
                    writes.add(client)
            self._apply(writes)
            now = time.monotonic()
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL
                for client in list(self._clients):
                    self._call(client.loop_misc)
                    if client.want_write():
                        writes.add(client)
                    elif client.reconnect_due(now):
                        self._call(client.reconnect)
                self._apply(writes)  # reconnects open sockets
            for client in writes:
                self._write(client)

    def _write(self, client: LoopClient) -> None:
        self._call(client.loop_write)
        sock = getattr(client, "sock", None)
        if sock is not None:
            # Still data to send: the socket buffer is full, wait until it drains.
            self._set_writing(client, sock, client.want_write())

    @staticmethod
    def _call(step: Any) -> None:
        try:
            step()
        except Exception:  # one client's failure must not stop the fleet's keep-alives
            log.exception("network step failed")


def jittered(delay: float, rng: random.Random) -> float:
    """A reconnect delay with +-20 % jitter (a fleet must not come back at once)."""
    return delay * (1.0 + rng.uniform(-0.2, 0.2))
