from __future__ import annotations

import pytest

from fedmq.protocol.crypto.paillier import (
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
    validate_ciphertexts,
)
from fedmq.protocol.errors import KeyMismatchError, ProtocolError


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


def _verdict(check, *args):
    try:
        check(*args)
    except ProtocolError as exc:
        return str(exc)
    return "ok"


def test_batched_validation_gives_each_single_checks_verdict(keypair):
    """One gcd for all ciphertexts of an update (validate_ciphertexts) must reject
    exactly what checking each one rejects, with the first bad one's reason."""
    pub, priv = keypair
    good = encrypt_ints(pub, list(range(6)))
    bad = {"zero": 0, "n^2": pub.nsquare, "above n^2": pub.nsquare + 5, "p": priv.p,
           "q times k": priv.q * 987654321, "n": pub.n, "n times k": pub.n * 3,
           "p times a ciphertext": priv.p * good[0] % pub.nsquare}
    for length in (1, 2, 4, 6):
        assert validate_ciphertexts(pub, good[:length]) is None
        for where in range(length):
            for c in bad.values():
                vector = [*good[:length]]
                vector[where] = c
                want = next(v for v in (_verdict(validate_ciphertext, pub, x) for x in vector)
                            if v != "ok")
                assert _verdict(validate_ciphertexts, pub, vector) == want
    # Two bad ones: the first decides the reason, as it did one ciphertext at a time.
    assert _verdict(validate_ciphertexts, pub, [good[0], priv.p, 0]) == \
        "ciphertext shares a factor with n"
    assert _verdict(validate_ciphertexts, pub, [0, good[0], priv.q]) == \
        "ciphertext outside (0, n^2)"
    # p in one ciphertext and q in another: the product is 0 mod n, still rejected.
    assert _verdict(validate_ciphertexts, pub, [priv.p * 3, priv.q * 5]) != "ok"
    body = ciphertexts_to_bytes(pub, [good[1], priv.p * 7, good[2]])
    with pytest.raises(ProtocolError, match="shares a factor"):
        ciphertexts_from_bytes(pub, body, 3)


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
