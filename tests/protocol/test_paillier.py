from __future__ import annotations

import pytest

from protocol.errors import KeyMismatchError, ProtocolError
from protocol.paillier import (
    ciphertext_size,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt_ints,
    encrypt_ints,
    fingerprint,
    private_key_from_dict,
    private_key_to_dict,
    public_key_from_hex,
    validate_ciphertext,
)


def test_fingerprint_is_stable_sha256_hex(keypair):
    pub, _ = keypair
    fp = fingerprint(pub)
    assert len(fp) == 64 and fp == fingerprint(public_key_from_hex(format(pub.n, "x")))


def test_private_key_dict_round_trip(keypair):
    _, priv = keypair
    again = private_key_from_dict(private_key_to_dict(priv))
    c = encrypt_ints(priv.public_key, [42])
    assert decrypt_ints(again, c) == [42]


def test_inconsistent_private_key_is_refused(keypair):
    _, priv = keypair
    data = private_key_to_dict(priv)
    data["p"] = format(priv.p + 2, "x")
    with pytest.raises(ProtocolError, match="inconsistent"):
        private_key_from_dict(data)


def test_encryption_is_randomized_and_fixed_length(keypair):
    pub, _ = keypair
    a, b = encrypt_ints(pub, [7, 7])
    assert a != b
    body = ciphertexts_to_bytes(pub, [a, b])
    assert len(body) == 2 * ciphertext_size(pub)
    assert ciphertexts_from_bytes(pub, body, 2) == [a, b]


def test_plaintext_outside_zn_is_refused(keypair):
    pub, _ = keypair
    with pytest.raises(ValueError):
        encrypt_ints(pub, [-1])
    with pytest.raises(ValueError):
        encrypt_ints(pub, [pub.n])


@pytest.mark.parametrize("bad", ["zero", "nsquare", "multiple_of_p"])
def test_ciphertexts_outside_zstar_are_rejected(keypair, bad):
    pub, priv = keypair
    c = {"zero": 0, "nsquare": pub.nsquare, "multiple_of_p": priv.p * 12345}[bad]
    with pytest.raises(ProtocolError):
        validate_ciphertext(pub, c)


def test_truncated_ciphertext_body_is_rejected(keypair):
    pub, _ = keypair
    body = ciphertexts_to_bytes(pub, encrypt_ints(pub, [1, 2]))
    with pytest.raises(KeyMismatchError):
        ciphertexts_from_bytes(pub, body[:-1], 2)


def test_bad_public_key_hex_is_refused():
    with pytest.raises(ProtocolError):
        public_key_from_hex("not hex")
    with pytest.raises(ProtocolError):
        public_key_from_hex("ff")
