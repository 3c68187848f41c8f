"""A logged-in agent flooding its own update topic with large payloads that pass the header checks.

``python -m fedmq.benchmarks.flooder PORT USER PASSWORD AGENT_ID N_HEX BYTES SECONDS``: for
SECONDS, publish update payloads of about BYTES bytes as fast as the broker takes
them (QoS 0 over a raw socket). Each has the right magic, version, schema, key
fingerprint and ciphertext size, and every ciphertext is a valid element of
Z*_{n^2}: only the signature is wrong, so a receiver that decodes before it
checks anything pays the full price. Prints how many it sent. Used by
``benchmarks.flood`` and its test; 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import sys
import time

from fedmq.protocol.crypto.paillier import ciphertext_size, fingerprint, public_key_from_hex
from fedmq.protocol.crypto.signing import SIGNATURE_BYTES
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import MAGIC, SCHEMA, VERSION


def flood_payload(n_hex: str, agent_id: str, size: int) -> bytes:
    key = public_key_from_hex(n_hex)
    width = ciphertext_size(key)
    count = max(1, (size - 600) // width)
    fp = fingerprint(key)
    header = json.dumps({"schema": SCHEMA, "fleet": "x", "run": "flood", "round": 1,
                         "agent": agent_id, "key": fp, "codec": "0" * 32, "values": count,
                         "count": count, "size": width}, separators=(",", ":")).encode()
    body = struct.pack(">4sBH", MAGIC, VERSION, len(header)) + header
    # 2 is a unit mod n^2 (n is odd): passes every per-ciphertext check.
    body += (2).to_bytes(width, "big") * count
    return body + hashlib.sha512(body).digest()[:SIGNATURE_BYTES]


def _packet(kind: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 control packet: type byte, variable-length remaining length, body."""
    out, n = bytearray([kind]), len(body)
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">H", len(raw)) + raw


def flood(port: int, user: str, password: str, agent_id: str, payload: bytes,
          seconds: float, fleet: str = "bench") -> int:
    """QoS 0 PUBLISHes written with blocking ``sendall``: exactly as fast as TCP and the
    broker take them, with no client-side queue (paho would buffer without bound)."""
    connect = _packet(0x10, _string("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 60)
                      + _string(f"{agent_id}-flooder") + _string(user) + _string(password))
    publish = _packet(0x30, _string(Topics(fleet).update(agent_id)) + payload)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(connect)
        connack = sock.recv(4)
        if len(connack) != 4 or connack[3] != 0:
            raise SystemExit(f"broker refused the flooder: {connack!r}")
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                sock.sendall(publish)
                sent += 1
        except OSError:
            pass  # disconnected by the broker: the flood is over
    return sent


def main(argv: list[str]) -> int:
    port, user, password, agent_id, n_hex, size, seconds = argv
    payload = flood_payload(n_hex, agent_id, int(size))
    print(flood(int(port), user, password, agent_id, payload, float(seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
