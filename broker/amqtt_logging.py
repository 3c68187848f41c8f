"""amqtt's own log lines, one line each and rate-limited per kind.

amqtt logs every failed delivery task with its traceback: a fleet of 100 agents
whose PUBACKs come late prints ~1,500 lines before round 1, all saying the same
thing. ``install()`` takes amqtt's records off the root logger and re-emits
each as ONE line on ``fedmq.broker.amqtt``: the exception collapsed to its last line
(``TimeoutError: Timeout waiting for PUBACK for packet ID 7``), at most one line
per kind (logger, level, message with numbers and object reprs blanked) per
``interval`` seconds, the next one carrying the count of those held back.
With ``-v`` (``fedmq.broker.amqtt`` at DEBUG) the traceback is kept.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Callable

TARGET = "fedmq.broker.amqtt"
_SOURCE = "amqtt"
_REPR = re.compile(r"<[^<>]*(?:<[^<>]*>[^<>]*)*>")  # <Task ... coro=<...> exception=...>
_NUMBER = re.compile(r"\d+")
MAX_KINDS = 256  # beyond it kinds share one bucket: a rate limit must not grow unbounded


def one_line(record: logging.LogRecord) -> str:
    """The record's message without object reprs, plus the last line of its exception."""
    message = _REPR.sub("", record.getMessage()).strip().rstrip(":").strip()
    message = message.splitlines()[0] if message else record.name
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        message = f"{message}: {last}"
    return message


class OneLineHandler(logging.Handler):
    """Re-emits amqtt records on ``fedmq.broker.amqtt``, one line each, rate-limited per kind."""

    def __init__(self, *, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._state_lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(TARGET)
        if not target.isEnabledFor(record.levelno):
            return
        line = one_line(record)
        if record.levelno < logging.WARNING:
            target.log(record.levelno, "%s: %s", record.name, line)  # -v chatter: as is
            return
        kind = f"{record.name}|{record.levelno}|{_NUMBER.sub('#', line)}"
        now = self._clock()
        with self._state_lock:
            if kind not in self._last and len(self._last) >= MAX_KINDS:
                kind = "(other)"
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                self.suppressed += 1
                return
            held = self._held.pop(kind, 0)
            self._last[kind] = now
        more = f" (and {held} more like it in the last {self.interval:.0f} s)" if held else ""
        keep_tb = record.exc_info if target.isEnabledFor(logging.DEBUG) else None
        target.log(record.levelno, "%s%s", line, more, exc_info=keep_tb)

    def flush_held(self) -> None:
        """Say how many lines were held back since each kind's last line (at shutdown)."""
        with self._state_lock:
            held, self._held = self._held, {}
        for kind, count in held.items():
            if count:
                logging.getLogger(TARGET).warning(
                    "%d more amqtt messages like: %s", count, kind.split("|", 2)[-1])


_installed: OneLineHandler | None = None
_install_lock = threading.Lock()


def install(*, interval: float = 30.0) -> OneLineHandler:
    """Route amqtt's log records through one ``OneLineHandler`` (idempotent)."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = OneLineHandler(interval=interval)
            source = logging.getLogger(_SOURCE)
            source.addHandler(_installed)
            # Not to the root logger's handlers as well: that would print the traceback.
            source.propagate = False
        return _installed
