"""Threshold Paillier: k trustees hold shares of the key and any t of them decrypt.

Written here because no maintained Python library offers threshold Paillier; it is pure
arithmetic over gmpy2, with no I/O. The scheme is Shoup's threshold RSA carried over to
Paillier by Damgard and Jurik, with s = 1 and g = n + 1, so ciphertexts are exactly those
``phe`` and ``paillier.encrypt_ints`` make: (1 + M*n) * r^n mod n^2 for a plaintext M.

A trusted dealer picks safe primes p = 2p' + 1, q = 2q' + 1, sets m = p'q' and the secret
d with d = 0 mod m, d = 1 mod n, and shares d with a degree t - 1 polynomial over Z_{nm}.
Trustee i raises a ciphertext to 2*Delta*s_i (Delta = k!) and proves, by a Chaum-Pedersen
proof made non-interactive with SHA-256, that it used the same exponent as in its public
verification key v_i = v^(Delta*s_i). Any t partials combine, with integer Lagrange
coefficients, into c^(4*Delta^2*d) = 1 + 4*Delta^2*M*n mod n^2, whence the plaintext; t - 1
partials reveal nothing about it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
from phe.paillier import PaillierPublicKey

from fedmq.protocol.crypto.paillier import MIN_KEY_BITS, validate_ciphertexts
from fedmq.protocol.errors import ProtocolError

__all__ = [
    "MAX_TRUSTEES", "KeyShare", "PartialDecryption", "ProofError", "ThresholdPublic", "combine",
    "deal", "deal_from_primes", "generate_safe_prime", "partial_decrypt", "verify_partial",
]

# Delta = k! multiplies every share exponent and sizes the proofs: 64! is already ~300 bits,
# and no deployment needs more trustees than that.
MAX_TRUSTEES = 64
CHALLENGE_BITS = 256
_PROOF_DOMAIN = b"fedmq.threshold-proof/1"
_HEX = re.compile(r"[0-9a-f]+")


class ProofError(ProtocolError):
    """A trustee's partial decryption is not what its verification key commits it to."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class ThresholdPublic:
    n: int
    threshold: int
    trustees: int
    v: int
    verification: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.n.bit_length() < MIN_KEY_BITS or self.n % 2 == 0:
            raise ProtocolError(f"n of {self.n.bit_length()} bits is not an acceptable modulus")
        if not 1 <= self.threshold <= self.trustees <= MAX_TRUSTEES:
            raise ProtocolError(f"threshold {self.threshold} of {self.trustees} trustees: need "
                                f"1 <= threshold <= trustees <= {MAX_TRUSTEES}")
        if len(self.verification) != self.trustees:
            raise ProtocolError(f"verification has {len(self.verification)} keys, "
                                f"not one for each of {self.trustees} trustees")
        for i, x in enumerate((self.v, *self.verification)):
            if not 0 < x < self.n * self.n or math.gcd(x, self.n) != 1:
                name = f"verification[{i - 1}]" if i else "v"
                raise ProtocolError(f"{name} is not a unit mod n^2")

    @property
    def public_key(self) -> PaillierPublicKey:
        return PaillierPublicKey(self.n)

    @property
    def delta(self) -> int:
        return math.factorial(self.trustees)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "fedmq.threshold-public/1", "n": _hex(self.n),
                "threshold": self.threshold, "trustees": self.trustees, "v": _hex(self.v),
                "verification": [_hex(x) for x in self.verification]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ThresholdPublic:
        _schema(doc, "fedmq.threshold-public/1")
        return cls(n=_int_field(doc, "n"), threshold=_count_field(doc, "threshold"),
                   trustees=_count_field(doc, "trustees"), v=_int_field(doc, "v"),
                   verification=_int_list_field(doc, "verification"))


@dataclass(frozen=True, repr=False)
class KeyShare:
    index: int
    share: int
    public: ThresholdPublic

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.public.trustees:
            raise ProtocolError(f"share index {self.index} outside 1..{self.public.trustees}")
        if not 0 <= self.share < self.public.n ** 2:
            raise ProtocolError("share outside [0, n^2)")

    def __repr__(self) -> str:
        return (f"KeyShare(index={self.index}, threshold={self.public.threshold}, "
                f"trustees={self.public.trustees}, share=<hidden>)")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "fedmq.key-share/1", "index": self.index, "share": _hex(self.share),
                "public": self.public.to_dict()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> KeyShare:
        """Parse and check the share against its verification key: a corrupted file fails here."""
        _schema(doc, "fedmq.key-share/1")
        if not isinstance(doc.get("public"), Mapping):
            raise ProtocolError("key share lacks its public part")
        public = ThresholdPublic.from_dict(doc["public"])
        share = cls(index=_count_field(doc, "index"), share=_int_field(doc, "share"), public=public)
        expected = public.verification[share.index - 1]
        if gmpy2.powmod(public.v, public.delta * share.share, public.n ** 2) != expected:
            raise ProtocolError(f"share {share.index} does not match its verification key")
        return share


@dataclass(frozen=True)
class PartialDecryption:
    index: int
    values: tuple[int, ...]
    proofs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.proofs):
            raise ProtocolError(f"{len(self.values)} values but {len(self.proofs)} proofs")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "fedmq.partial-decryption/1", "index": self.index,
                "values": [_hex(x) for x in self.values],
                "proofs": [[_hex(e), _hex(z)] for e, z in self.proofs]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PartialDecryption:
        _schema(doc, "fedmq.partial-decryption/1")
        raw = doc.get("proofs")
        if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw):
            raise ProtocolError("field 'proofs' is not a list of [e, z] pairs")
        flat = _int_list_field(doc, "proofs", [x for p in raw for x in p])
        return cls(index=_count_field(doc, "index"), values=_int_list_field(doc, "values"),
                   proofs=tuple(zip(flat[::2], flat[1::2], strict=True)))


def generate_safe_prime(bits: int) -> int:
    """A prime p = 2p' + 1 (p' prime) of exactly ``bits`` bits, the top two set.

    Two such primes multiply to exactly 2 * bits bits. Candidates p' are sieved in windows
    against small primes l, for both p' = 0 and 2p' + 1 = 0 mod l, before any primality test:
    safe primes are rare (about one in (ln p)^2), so the sieve saves almost every modexp.
    """
    if bits < 64:
        raise ValueError("safe primes below 64 bits are not supported")
    window = 1 << 14  # odd candidates start, start + 2, ..., start + 2*(window - 1)
    low, high = 3 << (bits - 3), (1 << (bits - 1)) - 2 * window
    while True:
        start = (low + secrets.randbelow(high - low)) | 1
        alive = bytearray(b"\x01") * window
        for ell in _small_primes():
            # start + 2j = t mod ell  <=>  j = (t - start) / 2 mod ell, for t = 0 and (ell-1)/2
            for t in (0, (ell - 1) // 2):
                j = (t - start) * ((ell + 1) // 2) % ell
                alive[j::ell] = bytes(len(range(j, window, ell)))
        for j in (j for j, ok in enumerate(alive) if ok):
            pp = gmpy2.mpz(start + 2 * j)
            if gmpy2.is_strong_prp(pp, 2) and gmpy2.is_strong_prp(2 * pp + 1, 2) \
                    and gmpy2.is_prime(pp, 30) and gmpy2.is_prime(2 * pp + 1, 30):
                return int(2 * pp + 1)


@functools.lru_cache(maxsize=1)
def _small_primes(limit: int = 1 << 15) -> tuple[int, ...]:
    """Odd primes below ``limit`` (all far below any p' we sieve, so none excludes itself)."""
    sieve = bytearray(b"\x01") * limit
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, limit, i)))
    return tuple(i for i in range(3, limit) if sieve[i])


def deal(bits: int, trustees: int, threshold: int) -> tuple[ThresholdPublic, list[KeyShare]]:
    """Fresh safe primes, shared out; p, q and d live only inside this call."""
    if bits < MIN_KEY_BITS or bits % 256:
        raise ValueError(f"key size must be a multiple of 256 and at least {MIN_KEY_BITS} bits")
    _check_counts(trustees, threshold)
    while True:
        p, q = generate_safe_prime(bits // 2), generate_safe_prime(bits // 2)
        if p != q and (p * q).bit_length() == bits:
            return deal_from_primes(p, q, trustees, threshold)


def deal_from_primes(p: int, q: int, trustees: int,
                     threshold: int) -> tuple[ThresholdPublic, list[KeyShare]]:
    _check_counts(trustees, threshold)
    pp, qq = (p - 1) // 2, (q - 1) // 2
    if p == q or not all(gmpy2.is_prime(x, 30) for x in (p, q, pp, qq)):
        raise ValueError("p and q must be distinct safe primes")
    if (p * q).bit_length() < MIN_KEY_BITS:
        raise ValueError(f"n = p * q must have at least {MIN_KEY_BITS} bits")
    # p', q' > k keeps Delta = k! a unit mod n; gcd(n, m) = 1 makes the CRT for d possible.
    if min(pp, qq) <= trustees or math.gcd(p * q, pp * qq) != 1:
        raise ValueError("p and q are unsuitable: p' or q' too small or p = 2q + 1")
    n, m = p * q, pp * qq
    nm, nsq, delta = n * m, n * n, math.factorial(trustees)
    d = m * int(gmpy2.invert(m, n))  # d = 0 mod m, d = 1 mod n
    coefficients = [secrets.randbelow(nm) for _ in range(threshold - 1)] + [d]
    shares = [functools.reduce(lambda acc, a: (acc * i + a) % nm, coefficients, 0)  # Horner
              for i in range(1, trustees + 1)]
    # The squares of Z*_{n^2} form a cyclic group of order n*m; a random one generates it
    # except with negligible probability, so v_i pins Delta*s_i down mod n*m.
    r = 0
    while math.gcd(r, n) != 1:
        r = secrets.randbelow(nsq)
    v = int(gmpy2.powmod(r, 2, nsq))
    verification = tuple(int(gmpy2.powmod(v, delta * s, nsq)) for s in shares)
    public = ThresholdPublic(n=n, threshold=threshold, trustees=trustees, v=v,
                             verification=verification)
    return public, [KeyShare(index=i, share=s, public=public) for i, s in enumerate(shares, 1)]


def _check_counts(trustees: int, threshold: int) -> None:
    if not 1 <= threshold <= trustees <= MAX_TRUSTEES:
        raise ValueError(f"need 1 <= threshold <= trustees <= {MAX_TRUSTEES}, "
                         f"got {threshold} of {trustees}")


def partial_decrypt(share: KeyShare, ciphertexts: Sequence[int], *,
                    context: bytes) -> PartialDecryption:
    """c_i = c^(2*Delta*s_i) for each c, with a proof bound to ``context`` (the request)."""
    public = share.public
    validate_ciphertexts(public.public_key, ciphertexts)
    nsq, x = public.n ** 2, public.delta * share.share
    vi = public.verification[share.index - 1]
    values, proofs = [], []
    for c in ciphertexts:
        ci = int(gmpy2.powmod(c, 2 * x, nsq))
        c4, ci2 = int(gmpy2.powmod(c, 4, nsq)), ci * ci % nsq
        # r exceeds e * x by 2^256: z = r + e*x hides x up to statistical distance 2^-256.
        r = secrets.randbits(_nonce_bits(public))
        a, b = int(gmpy2.powmod(c4, r, nsq)), int(gmpy2.powmod(public.v, r, nsq))
        e = _challenge(context, public, c4, vi, ci2, a, b)
        values.append(ci)
        proofs.append((e, r + e * x))
    return PartialDecryption(index=share.index, values=tuple(values), proofs=tuple(proofs))


def verify_partial(public: ThresholdPublic, ciphertexts: Sequence[int],
                   partial: PartialDecryption, *, context: bytes) -> None:
    """Check log_{c^4}(c_i^2) = log_v(v_i) for every ciphertext; ProofError names the trustee."""
    i = _check_index(public, partial.index)
    validate_ciphertexts(public.public_key, ciphertexts)
    if len(partial.values) != len(ciphertexts):
        raise _bad(i, f"{len(partial.values)} values for {len(ciphertexts)} ciphertexts")
    n, nsq, vi = public.n, public.n ** 2, public.verification[i - 1]
    z_bound = 1 << (_nonce_bits(public) + 1)
    for pos, (c, ci, (e, z)) in enumerate(zip(ciphertexts, partial.values, partial.proofs,
                                              strict=True)):
        if not 0 < ci < nsq or math.gcd(ci, n) != 1:
            raise _bad(i, f"value for ciphertext {pos} is not a unit mod n^2")
        if not (0 <= e < 1 << CHALLENGE_BITS and 0 <= z < z_bound):
            raise _bad(i, f"proof for ciphertext {pos} is out of range")
        c4, ci2 = int(gmpy2.powmod(c, 4, nsq)), ci * ci % nsq
        # The prover's commitments, recovered: a = c^(4z) / (c_i^2)^e, b = v^z / v_i^e.
        a = int(gmpy2.powmod(c4, z, nsq) * gmpy2.powmod(ci2, -e, nsq) % nsq)
        b = int(gmpy2.powmod(public.v, z, nsq) * gmpy2.powmod(vi, -e, nsq) % nsq)
        if _challenge(context, public, c4, vi, ci2, a, b) != e:
            raise _bad(i, f"proof for ciphertext {pos} does not verify")


def combine(public: ThresholdPublic, ciphertexts: Sequence[int],
            partials: Sequence[PartialDecryption]) -> list[int]:
    """Plaintexts in [0, n) from at least t verified partials (the t lowest indices are used)."""
    indices = [_check_index(public, p.index) for p in partials]
    if len(set(indices)) != len(indices):
        raise ProtocolError(f"duplicate trustee indices in {sorted(indices)}")
    if len(partials) < public.threshold:
        raise ProtocolError(f"{len(partials)} partial decryptions; "
                            f"{public.threshold} are needed")
    chosen = sorted(partials, key=lambda p: p.index)[:public.threshold]
    for p in chosen:
        if len(p.values) != len(ciphertexts):
            raise ProtocolError(f"trustee {p.index} sent {len(p.values)} values "
                                f"for {len(ciphertexts)} ciphertexts")
        validate_ciphertexts(public.public_key, p.values)
    n, nsq = public.n, public.n ** 2
    lambdas = _lagrange([p.index for p in chosen], public.delta)
    scale = int(gmpy2.invert(4 * public.delta ** 2, n))
    out = []
    for pos in range(len(ciphertexts)):
        # prod c_i^(2*lambda_i) = c^(4*Delta*sum lambda_i s_i) = c^(4*Delta^2*d) = 1 + 4Delta^2 M n
        c = _interpolate(nsq, [p.values[pos] for p in chosen], [lambdas[p.index] for p in chosen])
        if c % n != 1:
            raise ProtocolError(f"partials do not combine at ciphertext {pos}: verify them first")
        out.append((c - 1) // n * scale % n)
    return out


def _lagrange(indices: Sequence[int], delta: int) -> dict[int, int]:
    """lambda_i = Delta * prod_{j != i} j / (j - i), an integer: k! clears the denominators."""
    out = {}
    for i in indices:
        num = delta * math.prod(j for j in indices if j != i)
        den = math.prod(j - i for j in indices if j != i)
        assert num % den == 0, "Delta = k! must clear every Lagrange denominator"
        out[i] = num // den
    return out


def _interpolate(nsq: int, values: Sequence[int], lambdas: Sequence[int]) -> int:
    acc = gmpy2.mpz(1)
    for ci, lam in zip(values, lambdas, strict=True):
        acc = acc * gmpy2.powmod(ci, 2 * lam, nsq) % nsq  # negative exponent: gmpy2 inverts
    return int(acc)


def _nonce_bits(public: ThresholdPublic) -> int:
    """Bits of the proof nonce r: Delta*s_i < Delta*n^2, plus the challenge, plus 256 to hide."""
    return (public.n ** 2).bit_length() + public.delta.bit_length() + 2 * CHALLENGE_BITS


def _challenge(context: bytes, public: ThresholdPublic, *values: int) -> int:
    h = hashlib.sha256(_PROOF_DOMAIN)
    ints = (public.n, public.v, *values)
    for part in (bytes(context), *(x.to_bytes((x.bit_length() + 7) // 8, "big") for x in ints)):
        h.update(len(part).to_bytes(4, "big") + part)  # length-prefixed: no two inputs collide
    return int.from_bytes(h.digest(), "big")


def _bad(index: int, what: str) -> ProofError:
    return ProofError(f"trustee {index}: {what}", index=index)


def _check_index(public: ThresholdPublic, index: int) -> int:
    if not 1 <= index <= public.trustees:
        raise ProtocolError(f"trustee index {index} outside 1..{public.trustees}")
    return index


def _hex(x: int) -> str:
    return format(int(x), "x")


def _schema(doc: Mapping[str, Any], schema: str) -> None:
    if not isinstance(doc, Mapping) or doc.get("schema") != schema:
        raise ProtocolError(f"not a {schema} document")


def _int_field(doc: Mapping[str, Any], field: str, value: Any = None) -> int:
    value = doc.get(field) if value is None else value
    # Stricter than int(x, 16), which also takes signs, "0x", blanks and underscores.
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ProtocolError(f"field {field!r} is missing or not a hex string")
    return int(value, 16)


def _int_list_field(doc: Mapping[str, Any], field: str, items: Any = None) -> tuple[int, ...]:
    items = doc.get(field) if items is None else items
    if not isinstance(items, list):
        raise ProtocolError(f"field {field!r} is missing or not a list")
    return tuple(_int_field(doc, field, x) for x in items)


def _count_field(doc: Mapping[str, Any], field: str) -> int:
    value = doc.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"field {field!r} is missing or not an integer")
    return value
