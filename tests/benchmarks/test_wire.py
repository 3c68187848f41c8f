"""The counting relay bench-flower puts between Flower's clients and server."""

from __future__ import annotations

import socket
import threading

from fedmq.benchmarks.wire import CountingProxy, mqtt_publish_bytes, process_cpu, threads_cpu


def test_the_relay_passes_and_counts_every_byte_each_way() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_twice() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while len(data) < 1000:
                data += conn.recv(4096)
            conn.sendall(data * 2)

    t = threading.Thread(target=echo_twice, daemon=True)
    t.start()
    proxy = CountingProxy(port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(b"x" * 1000)
            got = b""
            while len(got) < 2000:
                got += c.recv(4096)
        assert got == b"x" * 2000
        t.join(5)
        assert (proxy.up, proxy.down) == (1000, 2000)
    finally:
        proxy.close()
        server.close()


def test_mqtt_publish_bytes_counts_header_topic_packet_id_and_puback() -> None:
    # 1 fixed header + 1 length byte + (2 + 3 topic + 2 packet id + 10 payload) + 4 PUBACK
    assert mqtt_publish_bytes([10], "a/b") == 1 + 1 + 17 + 4
    assert mqtt_publish_bytes([200], "a/b") == 1 + 2 + 207 + 4  # two-byte remaining length


def test_cpu_readings_grow_with_work() -> None:
    import os

    before = threads_cpu(lambda name: "main" if name == "MainThread" else None)["main"]
    start = process_cpu(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert threads_cpu(lambda name: "main" if name == "MainThread" else None)["main"] > before
    assert process_cpu(os.getpid()) >= start

