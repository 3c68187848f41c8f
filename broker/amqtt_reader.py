"""A reader that frames the MQTT byte stream for amqtt and refuses oversize packets.

amqtt 0.12 has no packet size limit: it reads a packet field by field with
``read(n)`` calls, so a 4 MB SUBSCRIBE with a million filters is decoded (and
every filter checked against the ACL) before anything can object, stalling
the event loop for seconds. This adapter follows the packet boundaries
itself: it decodes each fixed header as amqtt reads it, so it knows a
packet's type and length before amqtt reads a byte of the body, and refuses

- any packet but PUBLISH longer than ``max_control_bytes``,
- a PUBLISH payload over ``max_payload_bytes`` (read in one call of exactly
  its length, so ``n`` over the cap is an oversize payload),
- a QoS 2 PUBLISH: fedmq's clients use QoS 0 and 1, and amqtt keeps the
  payload of every QoS 2 flow a client never completes (no PUBREL), even after
  the connection closes (black-box run: +3 GB for 3,000 flows of 1 MiB);
  Mosquitto's ``max_qos 1`` disconnects such a client the same way;
- a second CONNECT on one connection (MQTT-3.1.0-2; amqtt ignored it);
- a packet whose length MQTT fixes (PUBACK, PINGREQ, ...) with another
  length, a read that runs past the end of a packet, and a fixed header that
  amqtt does not read byte by byte: amqtt stops short of a fixed-size
  packet's declared length and overruns a variable one's on malformed input,
  and would then parse the rest as new packets, past every size check.

A refusal raises ``PacketRefused``, which amqtt's reader does not catch as a
protocol error: the connection is closed (as Mosquitto does with
``max_packet_size``).
"""

from __future__ import annotations

import logging

from amqtt.adapters import ReaderAdapter

from fedmq.protocol.errors import FedmqError

log = logging.getLogger(__name__)

_CONNECT, _PUBLISH = 1, 3
# MQTT 3.1.1 fixes the length of these packets, and amqtt reads exactly that much
# whatever the header claims: a longer one would leave bytes that amqtt parses as
# packets. Every other packet amqtt reads to (or past) its declared end.
_FIXED_LENGTH = {2: 2, 4: 2, 5: 2, 6: 2, 7: 2, 11: 2, 12: 0, 13: 0, 14: 0}
_PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
                 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
                 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT"}


class PacketRefused(FedmqError):
    """A client sent a packet over the broker's caps or broke MQTT framing; it is disconnected."""


class PayloadTooLarge(PacketRefused):
    """A client sent a PUBLISH payload over the broker's cap."""


class FramedReader(ReaderAdapter):
    """Wraps amqtt's reader; see the module docstring."""

    def __init__(self, inner: ReaderAdapter, *, max_payload_bytes: int,
                 max_control_bytes: int, peer: str) -> None:
        self._inner, self._peer = inner, peer
        self._max_payload, self._max_control = max_payload_bytes, max_control_bytes
        self._type: int | None = None  # of the packet whose header is being read
        self._length = 0  # remaining length decoded so far
        self._shift = 0  # of the next remaining-length byte; -1 once in the body
        self._body_left = 0
        self._connects = 0

    @property
    def between_packets(self) -> bool:
        """True when the last packet was read exactly to its end."""
        return self._type is None

    def _refuse(self, what: str, error: type[PacketRefused] = PacketRefused) -> PacketRefused:
        log.warning("closing connection from %s: %s", self._peer, what)
        return error(what)

    async def read(self, n: int = -1) -> bytes:
        if self._type is not None and self._shift < 0:  # in a packet's body
            if n < 0 or n > self._body_left:
                raise self._refuse(f"{_PACKET_NAMES.get(self._type, '?')} packet read past "
                                   f"its declared length (malformed packet)")
            if self._type == _PUBLISH and n > self._max_payload:
                raise self._refuse(f"PUBLISH payload of {n} bytes is over max_payload_bytes "
                                   f"({self._max_payload})", PayloadTooLarge)
            data: bytes = await self._inner.read(n)
            self._body_left -= len(data)
            if self._body_left == 0:
                self._type = None
            return data
        if n != 1:
            raise self._refuse("packet read out of step with its fixed header "
                               "(malformed packet)")
        data = await self._inner.read(1)
        if len(data) == 1:
            self._header_byte(data[0])
        return data

    def _header_byte(self, byte: int) -> None:
        if self._type is None:
            self._type, self._length, self._shift = byte >> 4, 0, 0
            if self._type == _PUBLISH and (byte >> 1) & 3 >= 2:
                raise self._refuse("QoS 2 PUBLISH (the broker takes QoS 0 and 1)")
            if self._type == _CONNECT:
                self._connects += 1
                if self._connects > 1:
                    raise self._refuse("second CONNECT on one connection (MQTT-3.1.0-2)")
            return
        self._length |= (byte & 0x7F) << self._shift
        self._shift += 7
        if byte & 0x80:
            if self._shift >= 28:
                raise self._refuse("remaining length longer than 4 bytes (malformed packet)")
            return  # more length bytes follow
        name = _PACKET_NAMES.get(self._type, f"type {self._type}")
        expected = _FIXED_LENGTH.get(self._type)
        if expected is not None and self._length != expected:
            raise self._refuse(f"{name} packet of {self._length} bytes (MQTT fixes it at "
                               f"{expected}; malformed packet)")
        if self._type != _PUBLISH and self._length > self._max_control:
            raise self._refuse(f"{name} packet of {self._length} bytes is over the cap of "
                               f"{self._max_control} for packets other than PUBLISH")
        self._shift, self._body_left = -1, self._length
        if self._length == 0:
            self._type = None

    def feed_eof(self) -> None:
        self._inner.feed_eof()
