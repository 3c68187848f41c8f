"""Paillier helpers on raw integers, layered over python-paillier (``phe``).

The codec turns floats into plaintext integers in Z_n; this module only
encrypts, adds and decrypts those integers. Keeping the layers apart lets the
packed codec (several values per plaintext) reuse everything here.

With g = n + 1 (what ``phe`` uses) a ciphertext is (1 + m*n) * r^n mod n^2 and
the product of two ciphertexts decrypts to the sum of their plaintexts mod n,
which is the whole trick behind aggregating without seeing one update.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from math import gcd
from typing import Any

import gmpy2
from phe import paillier
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from fedmq.protocol.errors import KeyMismatchError, ProtocolError

__all__ = [
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "add_ciphertexts",
    "ciphertext_size",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "decrypt_ints",
    "encrypt_ints",
    "fingerprint",
    "generate_keypair",
    "private_key_from_dict",
    "private_key_to_dict",
    "public_key_from_hex",
    "validate_ciphertext",
    "validate_ciphertexts",
]

MIN_KEY_BITS = 512


def generate_keypair(bits: int = 2048) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """A fresh keypair; 2048 bits for fleets, 512/1024 only for tests."""
    if bits < MIN_KEY_BITS or bits % 256:
        raise ValueError(f"key size must be a multiple of 256 and at least {MIN_KEY_BITS} bits")
    return paillier.generate_paillier_keypair(n_length=bits)


def fingerprint(public_key: PaillierPublicKey) -> str:
    """SHA-256 over n as big-endian bytes: what agents pin in their config."""
    n = public_key.n
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()


def public_key_from_hex(n_hex: str) -> PaillierPublicKey:
    try:
        n = int(n_hex, 16)
    except (TypeError, ValueError) as exc:
        raise ProtocolError("public key modulus is not a hex string") from exc
    if n.bit_length() < MIN_KEY_BITS or n % 2 == 0:
        raise ProtocolError(f"public key modulus of {n.bit_length()} bits is not acceptable")
    return PaillierPublicKey(n)


def private_key_to_dict(private_key: PaillierPrivateKey) -> dict[str, Any]:
    return {
        "schema": "fedmq.paillier-private/1",
        "n": format(private_key.public_key.n, "x"),
        "p": format(private_key.p, "x"),
        "q": format(private_key.q, "x"),
    }


def private_key_from_dict(data: dict[str, Any]) -> PaillierPrivateKey:
    if data.get("schema") != "fedmq.paillier-private/1":
        raise ProtocolError("not a fedmq Paillier private key file")
    try:
        n, p, q = (int(data[k], 16) for k in ("n", "p", "q"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("private key file lacks a valid n, p or q") from exc
    if p * q != n:
        raise ProtocolError("private key file is inconsistent: p * q != n")
    return PaillierPrivateKey(PaillierPublicKey(n), p, q)


def ciphertext_size(public_key: PaillierPublicKey) -> int:
    """Bytes of one ciphertext on the wire: fixed length of n^2."""
    return (public_key.nsquare.bit_length() + 7) // 8


def encrypt_ints(public_key: PaillierPublicKey, plaintexts: Iterable[int],
                 obfuscators: Iterable[int] | None = None) -> list[int]:
    """Encrypt integers already reduced into [0, n) by a codec.

    With ``obfuscators`` (precomputed r^n mod n^2, one per plaintext, each used
    once) encryption is (1 + m*n) * r^n mod n^2: one multiplication, because
    (n + 1)^m = 1 + m*n mod n^2. Without, phe computes r^n on the spot.
    """
    n = public_key.n
    if obfuscators is None:
        out = []
        for m in plaintexts:
            _check_plaintext(n, m)
            out.append(public_key.raw_encrypt(m))
        return out
    nsq = gmpy2.mpz(public_key.nsquare)
    ms, rs = list(plaintexts), list(obfuscators)
    if len(ms) != len(rs):
        raise ValueError(f"{len(ms)} plaintexts but {len(rs)} obfuscators")
    for m in ms:
        _check_plaintext(n, m)
    return [int(gmpy2.f_mod((1 + m * n) * r, nsq)) for m, r in zip(ms, rs, strict=True)]


def _check_plaintext(n: int, m: int) -> None:
    if not 0 <= m < n:
        raise ValueError("plaintext outside [0, n): encode it with a codec first")


def add_ciphertexts(public_key: PaillierPublicKey, a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Homomorphic element-wise sum: one multiplication mod n^2 per position.

    Returns gmpy2 integers (an ``int`` subtype for arithmetic) so a running sum
    over many agents never converts back and forth.
    """
    if len(a) != len(b):
        raise ValueError(f"cannot add {len(a)} ciphertexts to {len(b)}")
    _, nsq = _moduli(public_key.n)
    return [gmpy2.f_mod(gmpy2.mpz(x) * y, nsq) for x, y in zip(a, b, strict=True)]


def decrypt_ints(private_key: PaillierPrivateKey, ciphertexts: Iterable[int]) -> list[int]:
    """Plaintexts in [0, n); phe decrypts with CRT over p and q (gmpy2 powmod)."""
    return [int(private_key.raw_decrypt(int(c))) for c in ciphertexts]


def validate_ciphertext(public_key: PaillierPublicKey, c: int) -> None:
    """Reject integers that are not in Z*_{n^2}: they would poison the whole sum."""
    if not 0 < c < public_key.nsquare:
        raise ProtocolError("ciphertext outside (0, n^2)")
    if gcd(c, public_key.n) != 1:
        raise ProtocolError("ciphertext shares a factor with n")


@functools.lru_cache(maxsize=16)
def _moduli(n: int) -> tuple[Any, Any]:
    """n and n^2 as gmpy2 integers, converted once per key rather than per ciphertext."""
    return gmpy2.mpz(n), gmpy2.mpz(n) * n


def validate_ciphertexts(public_key: PaillierPublicKey, ciphertexts: Sequence[int]) -> None:
    """``validate_ciphertext`` for each, with one gcd instead of one per ciphertext.

    A prime dividing n divides the product of the c_i (mod n) exactly when it
    divides one of them, so gcd(prod c_i mod n, n) == 1 iff every gcd(c_i, n) == 1:
    the same verdict for a quarter of the cost at four ciphertexts an update, and
    less the more there are. When anything fails, the ciphertexts are checked one
    by one, so the error names the first bad one exactly as before.
    """
    n, nsq = _moduli(public_key.n)
    product = gmpy2.mpz(1)
    for c in ciphertexts:
        if not 0 < c < nsq:
            break
        product = gmpy2.f_mod(product * c, n)
    else:
        if gmpy2.gcd(product, n) == 1:
            return
    for c in ciphertexts:
        validate_ciphertext(public_key, c)
    raise ProtocolError("ciphertext shares a factor with n")  # not reached: see above


def ciphertexts_to_bytes(public_key: PaillierPublicKey, ciphertexts: Sequence[int]) -> bytes:
    size = ciphertext_size(public_key)
    return b"".join(int(c).to_bytes(size, "big") for c in ciphertexts)


def ciphertexts_from_bytes(public_key: PaillierPublicKey, body: bytes, count: int) -> list[int]:
    """Split fixed-length big-endian ciphertexts and validate each one."""
    size = ciphertext_size(public_key)
    if len(body) != size * count:
        raise KeyMismatchError(
            f"expected {count} ciphertexts of {size} bytes ({size * count}), got {len(body)} bytes"
        )
    out = [int.from_bytes(body[i * size:(i + 1) * size], "big") for i in range(count)]
    validate_ciphertexts(public_key, out)
    return out
