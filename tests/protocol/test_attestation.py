"""protocol.attestation: a device's signed word on its update, carried in the update header."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest

from fedmq.protocol.attestation import Attestation, Statement, ciphertext_hash
from fedmq.protocol.crypto.paillier import ciphertexts_to_bytes, encrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import (
    ATTEST_DOMAIN,
    CONTROL_DOMAIN,
    UPDATE_DOMAIN,
    Signer,
)
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update

DEVICE = Signer.from_seed(b"attest-device")
OTHER = Signer.from_seed(b"attest-other")
STATEMENT = Statement("f", "r1", 3, "pi-1", "k" * 64, "c" * 32, 4, bytes(range(32)))


def make_update(pub, **kw):
    base = dict(fleet="f", run_id="r1", round_id=2, agent_id="pi-1",
                key_fingerprint=fingerprint(pub), codec_digest="c" * 32, n_values=3,
                ciphertexts=tuple(encrypt_ints(pub, [1, 2, 3])))
    return UpdateMessage(**{**base, **kw})


def test_a_statement_verifies_with_its_signer_only():
    signature = STATEMENT.sign(DEVICE)
    STATEMENT.verify(DEVICE.public_key, signature)
    with pytest.raises(ProtocolError, match="bad signature"):  # attestation by another key
        STATEMENT.verify(OTHER.public_key, signature)


@pytest.mark.parametrize("field,value", [
    ("fleet", "g"), ("run_id", "r2"), ("round_id", 2), ("agent_id", "pi-2"),
    ("key_fingerprint", "j" * 64), ("codec_digest", "d" * 32), ("n_values", 5),
    ("ciphertext_hash", bytes(32)),
])
def test_every_field_is_attested(field, value):
    signature = STATEMENT.sign(DEVICE)
    with pytest.raises(ProtocolError, match="bad signature"):
        replace(STATEMENT, **{field: value}).verify(DEVICE.public_key, signature)


@pytest.mark.parametrize("domain", [UPDATE_DOMAIN, CONTROL_DOMAIN, b"fedmq/partial/2\x00"])
def test_a_signature_of_another_domain_is_no_attestation(domain):
    assert domain != ATTEST_DOMAIN
    forged = DEVICE.sign(domain, STATEMENT.to_bytes())
    with pytest.raises(ProtocolError, match="bad signature"):
        STATEMENT.verify(DEVICE.public_key, forged)


def test_tampered_or_malformed_attestations_are_refused():
    signature = bytearray(STATEMENT.sign(DEVICE))
    signature[5] ^= 1
    with pytest.raises(ProtocolError, match="bad signature"):
        STATEMENT.verify(DEVICE.public_key, bytes(signature))
    with pytest.raises(ProtocolError, match="missing or malformed"):
        STATEMENT.verify(DEVICE.public_key, b"")
    att = Attestation(bytes(32), bytes(64))
    assert Attestation.from_json(att.to_json()) == att
    for bad in [None, "x", [att.to_json()[0]], ["zz", "00"], [att.to_json()[0], "00" * 63],
                [1, 2]]:
        with pytest.raises(ProtocolError, match="attestation"):
            Attestation.from_json(bad)


def test_an_update_carries_its_attestation_in_the_signed_header(keypair):
    pub, _ = keypair
    msg = make_update(pub)
    update = decode_update(encode_update(msg, pub, DEVICE), pub)
    update.verify(DEVICE.public_key)  # the update's own signature covers the header
    att = update.attested(DEVICE.public_key, pub)
    assert att.ciphertext_hash == ciphertext_hash(ciphertexts_to_bytes(pub, msg.ciphertexts))
    with pytest.raises(ProtocolError, match="does not verify"):  # not the enrolled key
        update.attested(OTHER.public_key, pub)
    with pytest.raises(ProtocolError, match="does not verify"):  # other ciphertexts
        replace(update, ciphertexts=tuple(encrypt_ints(pub, [1, 2, 4]))).attested(
            DEVICE.public_key, pub)


def test_an_update_without_or_with_a_foreign_attestation_is_refused_by_a_relay(keypair):
    pub, _ = keypair
    bare = decode_update(encode_update(make_update(pub), pub, DEVICE, attest=False), pub)
    assert bare.attestation == b""
    bare.verify(DEVICE.public_key)  # still a valid update for a direct aggregator
    with pytest.raises(ProtocolError, match="carries no attestation"):
        bare.attested(DEVICE.public_key, pub)
    # A device re-using another round's attestation (or another device's) inside a
    # validly signed update: the statement is rebuilt from this update's header.
    earlier = make_update(pub, round_id=1)
    stale = decode_update(encode_update(earlier, pub, DEVICE), pub).attestation
    update = decode_update(encode_update(make_update(pub, attestation=stale), pub, DEVICE,
                                         attest=False), pub)
    with pytest.raises(ProtocolError, match="does not verify"):
        update.attested(DEVICE.public_key, pub)


def test_older_readers_see_one_more_header_field_and_bad_ones_are_refused(keypair):
    pub, _ = keypair
    payload = encode_update(make_update(pub), pub, DEVICE)
    header_len = struct.unpack_from(">H", payload, 5)[0]
    header = json.loads(payload[7:7 + header_len])
    assert len(bytes.fromhex(header["attest"])) == 64  # the only new field
    forged = payload.replace(header["attest"].encode(), b"zz" * 64)
    with pytest.raises(ProtocolError, match="'attest' is not a signature"):
        decode_update(forged, pub)
