"""Measuring what benchmarks cost: bytes on a TCP link and CPU seconds from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from fedmq.broker.embedded import free_port

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: Path) -> float:
    """utime + stime of a /proc stat file, in seconds (0 if it is gone)."""
    try:
        text = path.read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # the name may hold spaces; fields follow it
    return (int(fields[11]) + int(fields[12])) / _TICK


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def process_cpu(pid: int) -> float:
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def _thread_cpu(tid: int) -> float:
    # schedstat's first field is the thread's time on a CPU in ns: stat counts 10 ms ticks,
    # too coarse for one client's share of a short round.
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return _stat_cpu(Path(f"/proc/self/task/{tid}/stat"))


def threads_cpu(group: Callable[[str], str | None]) -> dict[str, float]:
    """CPU seconds of this process's live threads, summed by ``group(thread name)``."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        key = group(t.name)
        if key is None or t.native_id is None:
            continue
        out[key] = out.get(key, 0.0) + _thread_cpu(t.native_id)
    return out


class CountingProxy:
    """A loopback TCP relay to ``127.0.0.1:target`` that counts the bytes each way: the
    gRPC (HTTP/2) bytes a Flower client and server exchange, framing included."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.up = 0  # client -> server
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)

    def close(self) -> None:
        self._stop.set()
        self._server.close()


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def mqtt_publish_bytes(payloads: Iterable[int], topic: str) -> int:
    """Bytes of QoS 1 PUBLISH packets with these payload sizes on ``topic``, each with
    its 4-byte PUBACK: fixed header (1 + remaining-length varint), topic, packet id."""
    total = 0
    for size in payloads:
        remaining = 2 + len(topic.encode()) + 2 + size
        varint = 1 + (remaining >= 128) + (remaining >= 16384) + (remaining >= 2097152)
        total += 1 + varint + remaining + 4
    return total
