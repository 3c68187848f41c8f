from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.protocol.crypto.paillier import encrypt_ints, fingerprint, generate_keypair
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import KeyMismatchError, ProtocolError
from fedmq.protocol.wire import MAGIC, UpdateMessage, decode_update, encode_update

SIGNER = Signer.from_seed(b"wire-test")


def make_update(pub, **kw):
    base = dict(fleet="f", run_id="r1", round_id=2, agent_id="pi-1",
                key_fingerprint=fingerprint(pub), codec_digest="c" * 32, n_values=3,
                ciphertexts=tuple(encrypt_ints(pub, [1, 2, 3])))
    return UpdateMessage(**{**base, **kw})


def encode(msg, pub):
    return encode_update(msg, pub, SIGNER)


def test_round_trip(keypair):
    pub, _ = keypair
    msg = make_update(pub)
    payload = encode(msg, pub)
    assert payload.startswith(MAGIC)
    back = decode_update(payload, pub)
    assert (back.fleet, back.run_id, back.round_id, back.agent_id, back.ciphertexts) == (
        msg.fleet, msg.run_id, msg.round_id, msg.agent_id, msg.ciphertexts)
    back.verify(SIGNER.public_key)
    with pytest.raises(ProtocolError, match="bad signature"):
        back.verify(Signer.generate().public_key)


def test_payload_is_binary_ciphertext_not_decimal_numbers(keypair):
    pub, _ = keypair
    msg = make_update(pub)
    payload = encode(msg, pub)
    header_len = struct.unpack_from(">H", payload, 5)[0]
    body = payload[7 + header_len:-64]  # ciphertexts, then the 64-byte signature
    assert len(body) == 3 * 128  # 512-bit key: n^2 is 128 bytes, fixed length
    assert str(msg.ciphertexts[0]).encode() not in payload


def test_update_for_another_key_is_refused(keypair):
    pub, _ = keypair
    other, _ = generate_keypair(512)
    with pytest.raises(KeyMismatchError):
        decode_update(encode(make_update(pub), pub), other)


@pytest.mark.parametrize("cut", [1, 7, 50, 128])
def test_truncated_payload_is_refused(keypair, cut):
    pub, _ = keypair
    payload = encode(make_update(pub), pub)
    with pytest.raises(ProtocolError):
        decode_update(payload[:-cut], pub)


def test_tampered_header_and_zero_ciphertext_are_refused(keypair):
    pub, _ = keypair
    payload = bytearray(encode(make_update(pub), pub))
    bad_version = bytes(payload[:4]) + b"\x09" + bytes(payload[5:])
    with pytest.raises(ProtocolError, match="version"):
        decode_update(bad_version, pub)
    zeroed = bytes(payload[:-192]) + bytes(128) + bytes(payload[-64:])
    with pytest.raises(ProtocolError, match="outside"):
        decode_update(zeroed, pub)
    header_len = struct.unpack_from(">H", payload, 5)[0]
    header = json.loads(bytes(payload[7:7 + header_len]))
    header["count"] = 2
    new_header = json.dumps(header).encode()
    forged = bytes(payload[:5]) + struct.pack(">H", len(new_header)) + new_header + \
        bytes(payload[7 + header_len:])
    with pytest.raises(KeyMismatchError):
        decode_update(forged, pub)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parser(keypair, data):
    pub, _ = keypair
    with pytest.raises(ProtocolError):
        decode_update(data, pub)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_payloads_are_refused_or_parse_cleanly(keypair, data):
    pub, _ = keypair
    original = encode(make_update(pub), pub)
    payload = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        msg = decode_update(bytes(payload), pub)
    except ProtocolError:
        return
    # A mutation inside a ciphertext still parses; the signature then gives it away.
    assert isinstance(msg, UpdateMessage)
    if bytes(payload) != original:
        with pytest.raises(ProtocolError):
            msg.verify(SIGNER.public_key)
