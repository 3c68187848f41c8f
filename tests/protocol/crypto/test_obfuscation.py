from __future__ import annotations

import pytest

from fedmq.protocol.crypto.obfuscation import (
    DjnObfuscators,
    StandardObfuscators,
    make_obfuscators,
)
from fedmq.protocol.crypto.paillier import decrypt_ints, encrypt_ints


@pytest.mark.parametrize("kind", ["djn", "standard"])
def test_obfuscators_are_fresh_nth_residues(keypair, kind):
    """An obfuscator is itself an encryption of 0; two draws never coincide."""
    pub, priv = keypair
    source = make_obfuscators(kind, pub)
    values = [source.next() for _ in range(20)]
    assert len(set(values)) == 20
    assert decrypt_ints(priv, values) == [0] * 20


@pytest.mark.parametrize("kind", ["djn", "standard"])
def test_encryption_with_precomputed_obfuscators_decrypts(keypair, kind):
    pub, priv = keypair
    source = make_obfuscators(kind, pub)
    plaintexts = [0, 1, 123456789, pub.n - 1]
    cts = encrypt_ints(pub, plaintexts, [source.next() for _ in plaintexts])
    assert decrypt_ints(priv, cts) == plaintexts
    again = encrypt_ints(pub, plaintexts, [source.next() for _ in plaintexts])
    assert set(cts).isdisjoint(again)  # same plaintexts, unlinkable ciphertexts


def test_obfuscator_count_must_match(keypair):
    pub, _ = keypair
    with pytest.raises(ValueError, match="obfuscators"):
        encrypt_ints(pub, [1, 2], [StandardObfuscators(pub).next()])


def test_djn_bases_differ_between_instances(keypair):
    """Each agent draws its own base: two sources share no table."""
    pub, _ = keypair
    a, b = DjnObfuscators(pub), DjnObfuscators(pub)
    assert a.table.rows[0][1] != b.table.rows[0][1]
    assert a.table_bytes == 64 * 16 * 128  # 256-bit exponent / 4-bit windows, 128-byte values


def test_unknown_kind_is_refused(keypair):
    pub, _ = keypair
    with pytest.raises(ValueError, match="unknown obfuscator"):
        make_obfuscators("fast", pub)
