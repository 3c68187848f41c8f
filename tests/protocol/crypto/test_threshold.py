from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import gmpy2
import pytest
from phe.paillier import PaillierPrivateKey

from fedmq.protocol.crypto.paillier import add_ciphertexts, encrypt_ints
from fedmq.protocol.crypto.threshold import (
    KeyShare,
    PartialDecryption,
    ProofError,
    ThresholdPublic,
    _interpolate,
    _lagrange,
    combine,
    deal,
    deal_from_primes,
    generate_safe_prime,
    partial_decrypt,
    verify_partial,
)
from fedmq.protocol.errors import ProtocolError

# Two 256-bit safe primes (top two bits set, so n has exactly 512 bits): an instant fixture.
P = 0xC98B6CA2F6DAAA4C1583C578B2C24C5CC003DD503ACF626D99C4F9D52D19D4A3
Q = 0xF2E71DC37F536D68D80481BFE26072AD6C32CDD323E32FF1E51B2B45BB2FDF83
CONTEXT = b"round-7/request-1"


@pytest.fixture(scope="module", params=[(3, 2), (5, 3)], ids=["2of3", "3of5"])
def dealt(request: pytest.FixtureRequest) -> tuple[ThresholdPublic, list[KeyShare]]:
    trustees, threshold = request.param
    return deal_from_primes(P, Q, trustees, threshold)


@pytest.fixture(scope="module")
def two_of_three() -> tuple[ThresholdPublic, list[KeyShare]]:
    return deal_from_primes(P, Q, 3, 2)


def _summed(public: ThresholdPublic, rng: random.Random) -> tuple[list[int], list[int]]:
    """Three encrypted vectors of four plaintexts, added homomorphically: (ciphertexts, sums)."""
    n = public.n
    rows = [[rng.randrange(n) for _ in range(4)] for _ in range(3)]
    cts = [encrypt_ints(public.public_key, row) for row in rows]
    total = add_ciphertexts(public.public_key, add_ciphertexts(public.public_key, cts[0], cts[1]),
                            cts[2])
    return [int(c) for c in total], [sum(col) % n for col in zip(*rows, strict=True)]


def test_safe_prime_generation() -> None:
    p = generate_safe_prime(128)
    assert p.bit_length() == 128 and p >> 126 == 0b11
    assert gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)
    with pytest.raises(ValueError):
        generate_safe_prime(32)


def test_hard_coded_primes_are_safe() -> None:
    assert all(gmpy2.is_prime(x) for x in (P, Q, (P - 1) // 2, (Q - 1) // 2))
    assert (P * Q).bit_length() == 512


def test_every_t_subset_decrypts_the_sum(dealt: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    public, shares = dealt
    cts, sums = _summed(public, random.Random(1))
    partials = [partial_decrypt(s, cts, context=CONTEXT) for s in shares]
    for partial in partials:
        verify_partial(public, cts, partial, context=CONTEXT)
    for subset in itertools.combinations(partials, public.threshold):
        assert combine(public, cts, list(reversed(subset))) == sums
    assert combine(public, cts, partials) == sums  # more than t: the t lowest are used
    plain = PaillierPrivateKey(public.public_key, P, Q)
    assert [plain.raw_decrypt(c) for c in cts] == sums


def test_deal_generates_working_keys() -> None:
    public, shares = deal(512, trustees=3, threshold=2)
    assert public.n.bit_length() == 512 and public.delta == 6 and len(shares) == 3
    cts = encrypt_ints(public.public_key, [0, 1, public.n - 1])
    partials = [partial_decrypt(s, cts, context=b"") for s in shares[1:]]
    assert combine(public, cts, partials) == [0, 1, public.n - 1]


def test_fewer_than_t_partials_are_refused(dealt: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    public, shares = dealt
    cts = encrypt_ints(public.public_key, [5])
    partials = [partial_decrypt(s, cts, context=CONTEXT) for s in shares[:public.threshold - 1]]
    with pytest.raises(ProtocolError, match=f"{public.threshold} are needed"):
        combine(public, cts, partials)


def test_t_minus_one_shares_do_not_decrypt(dealt: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    """Interpolating t - 1 shares as if they sufficed gives no plaintext, let alone the true one."""
    public, shares = dealt
    n, nsq, plaintext = public.n, public.n ** 2, 123456789
    [c] = encrypt_ints(public.public_key, [plaintext])
    scale = int(gmpy2.invert(4 * public.delta ** 2, n))
    for subset in itertools.combinations(shares, public.threshold - 1):
        indices = [s.index for s in subset]
        lambdas = _lagrange(indices, public.delta) if indices else {}
        values = [partial_decrypt(s, [c], context=CONTEXT).values[0] for s in subset]
        combined = _interpolate(nsq, values, [lambdas[i] for i in indices])
        assert combined % n != 1 or (combined - 1) // n * scale % n != plaintext


def test_duplicate_and_foreign_indices_are_refused(
        two_of_three: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    public, shares = two_of_three
    cts = encrypt_ints(public.public_key, [5])
    first = partial_decrypt(shares[0], cts, context=CONTEXT)
    with pytest.raises(ProtocolError, match="duplicate"):
        combine(public, cts, [first, first])
    with pytest.raises(ProtocolError, match=r"outside 1\.\.3"):
        combine(public, cts, [first, dataclasses.replace(first, index=4)])
    with pytest.raises(ProtocolError, match=r"outside 1\.\.3"):
        verify_partial(public, cts, dataclasses.replace(first, index=0), context=CONTEXT)


def test_partials_that_do_not_combine_are_caught(
        two_of_three: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    public, shares = two_of_three
    cts = encrypt_ints(public.public_key, [5])
    a, b = (partial_decrypt(s, cts, context=CONTEXT) for s in shares[:2])
    bad = dataclasses.replace(b, values=(b.values[0] * 3 % public.n ** 2,))
    with pytest.raises(ProtocolError, match="verify them first"):
        combine(public, cts, [a, bad])


def _tampered(public: ThresholdPublic, shares: list[KeyShare],
              cts: list[int]) -> dict[str, tuple[PartialDecryption, bytes]]:
    nsq = public.n ** 2
    honest = partial_decrypt(shares[0], cts, context=CONTEXT)
    other = partial_decrypt(shares[1], cts, context=CONTEXT)
    e, z = honest.proofs[1]
    return {
        "value times r": (dataclasses.replace(
            honest, values=(honest.values[0], honest.values[1] * 7 % nsq)), CONTEXT),
        "proof of another ciphertext": (dataclasses.replace(
            honest, proofs=(honest.proofs[0], honest.proofs[0])), CONTEXT),
        "proof for another context": (honest, b"round-7/request-2"),
        "another trustee's index": (dataclasses.replace(other, index=1), CONTEXT),
        "z out of range": (dataclasses.replace(
            honest, proofs=(honest.proofs[0], (e, z + (1 << 10_000)))), CONTEXT),
        "value not a unit": (dataclasses.replace(
            honest, values=(honest.values[0], P * 5)), CONTEXT),
        "value count": (PartialDecryption(1, honest.values[:1], honest.proofs[:1]), CONTEXT),
    }


@pytest.mark.parametrize("how", ["value times r", "proof of another ciphertext",
                                 "proof for another context", "another trustee's index",
                                 "z out of range", "value not a unit", "value count"])
def test_tampered_partial_fails_its_proof(
        two_of_three: tuple[ThresholdPublic, list[KeyShare]], how: str) -> None:
    public, shares = two_of_three
    cts = encrypt_ints(public.public_key, [11, 22])
    partial, context = _tampered(public, shares, cts)[how]
    with pytest.raises(ProofError) as caught:
        verify_partial(public, cts, partial, context=context)
    assert caught.value.index == 1 and "trustee 1" in str(caught.value)
    assert isinstance(caught.value, ProtocolError)
    verify_partial(public, cts, partial_decrypt(shares[0], cts, context=CONTEXT),
                   context=CONTEXT)


def test_bad_ciphertexts_are_refused(two_of_three: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    public, shares = two_of_three
    for bad in (0, public.n ** 2, P):
        with pytest.raises(ProtocolError):
            partial_decrypt(shares[0], [bad], context=CONTEXT)


def test_documents_round_trip_through_json(
        two_of_three: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    public, shares = two_of_three
    cts = encrypt_ints(public.public_key, [3])
    partial = partial_decrypt(shares[2], cts, context=CONTEXT)
    again = [cls.from_dict(json.loads(json.dumps(obj.to_dict())))
             for cls, obj in ((ThresholdPublic, public), (KeyShare, shares[2]),
                              (PartialDecryption, partial))]
    assert again == [public, shares[2], partial]
    doc = public.to_dict()
    assert doc["schema"] == "fedmq.threshold-public/1" and doc["n"] == format(public.n, "x")
    assert shares[2].to_dict()["schema"] == "fedmq.key-share/1"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n", None, "'n' is missing"),
    ("v", "zz", "'v' is missing or not a hex string"),
    ("v", "-1f", "'v'"),
    ("verification", "00", "'verification' is missing or not a list"),
    ("threshold", 4, "threshold 4 of 3"),
    ("trustees", "3", "'trustees'"),
    ("verification", ["1", "2"], "2 keys"),
    ("v", "0", "v is not a unit"),
    ("schema", "fedmq.key-share/1", "not a fedmq.threshold-public/1"),
])
def test_public_from_dict_names_the_bad_field(
        two_of_three: tuple[ThresholdPublic, list[KeyShare]], field: str, value: object,
        message: str) -> None:
    doc = two_of_three[0].to_dict()
    if value is None:
        del doc[field]
    else:
        doc[field] = value
    with pytest.raises(ProtocolError, match=message):
        ThresholdPublic.from_dict(doc)


def test_share_from_dict_checks_the_verification_key(
        two_of_three: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    share = two_of_three[1][0]
    doc = share.to_dict()
    doc["share"] = format(share.share + 1, "x")
    with pytest.raises(ProtocolError, match="does not match its verification key"):
        KeyShare.from_dict(doc)
    doc = share.to_dict()
    doc["index"] = 2
    with pytest.raises(ProtocolError, match="does not match"):
        KeyShare.from_dict(doc)
    doc["index"] = 9
    with pytest.raises(ProtocolError, match=r"outside 1\.\.3"):
        KeyShare.from_dict(doc)
    del doc["public"]
    with pytest.raises(ProtocolError, match="public part"):
        KeyShare.from_dict(doc)


def test_partial_from_dict_rejects_malformed_proofs() -> None:
    doc = {"schema": "fedmq.partial-decryption/1", "index": 1, "values": ["5"],
           "proofs": [["1"]]}
    with pytest.raises(ProtocolError, match="pairs"):
        PartialDecryption.from_dict(doc)
    doc["proofs"] = [["1", "2"], ["3", "4"]]
    with pytest.raises(ProtocolError, match="1 values but 2 proofs"):
        PartialDecryption.from_dict(doc)


def test_share_repr_hides_the_share(two_of_three: tuple[ThresholdPublic, list[KeyShare]]) -> None:
    share = two_of_three[1][0]
    text = repr(share)
    for secret in (str(share.share), format(share.share, "x")):
        assert secret not in text
    assert "index=1" in text and "hidden" in text


@pytest.mark.parametrize(("bits", "trustees", "threshold"), [
    (500, 3, 2), (768 + 128, 3, 2), (256, 3, 2), (2048, 3, 4), (2048, 65, 2), (2048, 3, 0),
])
def test_deal_rejects_bad_parameters(bits: int, trustees: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        deal(bits, trustees, threshold)


def test_deal_from_primes_requires_safe_primes() -> None:
    prime_not_safe = int(gmpy2.next_prime(P + 10))
    assert not gmpy2.is_prime((prime_not_safe - 1) // 2)
    for p, q in ((P, P), (P, prime_not_safe), (P + 2, Q)):
        with pytest.raises(ValueError):
            deal_from_primes(p, q, 3, 2)
    with pytest.raises(ValueError):
        deal_from_primes(P, Q, 65, 2)
    assert math.factorial(64) == deal_from_primes(P, Q, 64, 2)[0].delta


def test_proof_error_carries_the_index() -> None:
    err = ProofError("share index 3, not the trustee's 2", index=3)
    assert err.index == 3 and str(err) == "share index 3, not the trustee's 2"
    assert isinstance(err, ProtocolError)
