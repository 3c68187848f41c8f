"""The embedded amqtt broker, runnable in the foreground or on a background thread.

amqtt is asyncio-only; the simulation and the tests want a broker beside
synchronous code, so ``EmbeddedBroker`` owns one event loop on one thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from fedmq.broker import amqtt_logging
from fedmq.broker.config import BrokerSettings
from fedmq.broker.memory import MemoryKeeper
from fedmq.protocol.errors import FedmqError

log = logging.getLogger(__name__)

# amqtt logs every packet at INFO; a fleet of 50 agents drowns the console.
# A level the application already chose (the CLI does) is left alone.
for _name in ("amqtt", "transitions"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


class BrokerStartError(FedmqError):
    """The embedded broker could not start (port taken, bad TLS files, ...)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (for tests and the simulation)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float, alive: Callable[[], bool]) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection within ``timeout`` seconds (False
    as soon as ``alive()`` is not: the process that was to listen has ended)."""
    end = time.monotonic() + timeout
    while alive() and time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate ``proc`` if it still runs (a broker, an agent); kill it if it outlives
    ``grace`` seconds, and reap it either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _DropStartupFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "startup failed" not in record.getMessage()


async def serve(settings: BrokerSettings, stop: asyncio.Event,
                started: threading.Event | None = None) -> None:
    """Run the broker until ``stop`` is set."""
    from fedmq.broker.amqtt_broker import FedmqBroker  # gateway-only dependency: import lazily

    config = settings.amqtt_config()
    # amqtt's tracebacks (one per late PUBACK...) become one rate-limited line each.
    one_line = amqtt_logging.install()
    # amqtt logs a failed start with its traceback; we say it in one line below.
    quiet = _DropStartupFailure()
    logging.getLogger("amqtt.broker").addFilter(quiet)
    try:
        broker = FedmqBroker(config, limits=settings.limits())
        await broker.start()
    except Exception as exc:  # amqtt wraps bind and plugin errors in several types
        raise BrokerStartError(
            f"cannot start broker on {settings.host}:{settings.port}: {exc.__cause__ or exc}"
        ) from exc
    finally:
        logging.getLogger("amqtt.broker").removeFilter(quiet)
    log.info("embedded broker listening on %s:%d", settings.host, settings.port)
    if started is not None:
        started.set()
    # A storm of TLS connections left glibc holding ~0.3 MB per closed one, and logged-in
    # clients their objects in reference cycles until a full collection (broker.memory).
    memory = MemoryKeeper()
    broker.connection_ended = memory.connection_ended
    keeper = asyncio.ensure_future(memory.run())
    try:
        await stop.wait()
    finally:
        keeper.cancel()
        await broker.drain(timeout=5.0)  # deliver what was accepted before closing
        await broker.shutdown()
        one_line.flush_held()


class EmbeddedBroker:
    """An amqtt broker on a background thread; ``with EmbeddedBroker(s):`` starts and stops it."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fedmq-broker", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, self._stop, self._started)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        self._thread.start()
        if not self._started.wait(timeout):
            raise BrokerStartError(f"broker did not start within {timeout:g} s")
        if self._error is not None:
            raise BrokerStartError(str(self._error)) from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
