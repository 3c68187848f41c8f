"""Fixed-point codecs: floats <-> plaintext integers in Z_n, with declared bounds.

Every agent of a fleet encodes with the SAME scale 2^-precision_bits, announced
with the public key; a per-value exponent (phe's default) would leak magnitude
and make sums of mixed exponents impossible without decryption.

The bounds are part of the contract: each weighted value lies in
[-value_bound, value_bound] and at most ``max_agents`` of them are summed, so a
decrypted sum outside n_summed * value_bound can only mean overflow or a
forged update; decode raises instead of returning a wrapped number.

A codec turns a vector of floats into a list of plaintext integers and back.
``PerValueCodec`` spends one plaintext (so one ciphertext) on each value: the
simple baseline. A packed codec can put many values in one plaintext behind the
same interface.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from protocol.errors import CodecError, CodecOverflowError, ProtocolError

FloatArray = NDArray[np.float64]

# float64 represents integers exactly up to 2^53; past that, quantization
# itself would round and the "exact integer sum" guarantee would be gone.
_FLOAT_EXACT_BITS = 53


@dataclass(frozen=True)
class CodecParams:
    """Fleet-wide encoding contract, announced next to the public key."""

    name: str = "per-value/1"
    precision_bits: int = 24
    clip: float = 10.0
    max_weight: int = 10_000
    max_agents: int = 10_000

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise CodecError(f"unknown codec {self.name!r}; known: {sorted(CODECS)}")
        if not 8 <= self.precision_bits <= 48:
            raise CodecError("precision_bits must be between 8 and 48")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise CodecError("clip must be a positive finite number")
        if self.max_weight < 1 or self.max_agents < 1:
            raise CodecError("max_weight and max_agents must be at least 1")
        if self.bound_int.bit_length() > _FLOAT_EXACT_BITS:
            raise CodecError(
                "clip * max_weight * 2^precision_bits exceeds 2^53: "
                "lower precision_bits, clip or max_weight"
            )

    @property
    def value_bound(self) -> float:
        """Largest |value| one agent may send: a weighted delta or the weight itself."""
        return float(self.max_weight) * max(self.clip, 1.0)

    @property
    def bound_int(self) -> int:
        return math.ceil(self.value_bound * 2**self.precision_bits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> CodecParams:
        if not isinstance(data, dict):
            raise ProtocolError("codec parameters must be an object")
        try:
            return cls(
                name=str(data["name"]),
                precision_bits=int(data["precision_bits"]),
                clip=float(data["clip"]),
                max_weight=int(data["max_weight"]),
                max_agents=int(data["max_agents"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad codec parameters: {exc}") from exc

    def digest(self, key_fingerprint: str) -> str:
        """Names this exact contract (params + key): updates must carry the same digest."""
        canon = json.dumps({"codec": self.to_dict(), "key": key_fingerprint}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:32]


class Codec(Protocol):
    """What agents and the aggregator need from any codec."""

    params: CodecParams
    modulus: int

    def plaintext_count(self, n_values: int) -> int:
        """How many plaintexts (so ciphertexts) ``n_values`` values need."""
        ...

    def encode(self, values: FloatArray) -> list[int]:
        """Quantize values inside the declared bounds into plaintexts in [0, n)."""
        ...

    def decode(self, plaintexts: Sequence[int], n_values: int, n_summed: int) -> FloatArray:
        """Decode a decrypted sum of ``n_summed`` encodings; raise on overflow."""
        ...


class PerValueCodec:
    """One fixed-point value per Paillier plaintext; negatives as n - |x| (mod n)."""

    def __init__(self, params: CodecParams, modulus: int) -> None:
        # A sum of max_agents values must stay in (-n/2, n/2) to decode unambiguously.
        if params.max_agents * params.bound_int >= modulus // 2:
            raise CodecError("key too small for max_agents * value bound; use a larger key")
        self.params = params
        self.modulus = modulus
        self._scale = float(2**params.precision_bits)

    def plaintext_count(self, n_values: int) -> int:
        return n_values

    def encode(self, values: FloatArray) -> list[int]:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or not np.all(np.isfinite(arr)):
            raise CodecError("values must be a finite 1-D vector")
        quantized = np.rint(arr * self._scale)
        if np.any(np.abs(quantized) > self.params.bound_int):
            raise CodecOverflowError(
                f"value beyond the declared bound {self.params.value_bound:g}"
            )
        n = self.modulus
        return [int(q) % n for q in quantized]

    def decode(self, plaintexts: Sequence[int], n_values: int, n_summed: int) -> FloatArray:
        if len(plaintexts) != self.plaintext_count(n_values):
            raise CodecError(f"expected {n_values} plaintexts, got {len(plaintexts)}")
        if not 1 <= n_summed <= self.params.max_agents:
            raise CodecOverflowError(
                f"{n_summed} summed updates exceed max_agents={self.params.max_agents}"
            )
        n, limit = self.modulus, n_summed * self.params.bound_int
        out = np.empty(n_values, dtype=np.float64)
        for i, m in enumerate(plaintexts):
            signed = m - n if m > n // 2 else m
            if abs(signed) > limit:
                raise CodecOverflowError(f"decoded value {i} lies outside the bounds of the sum")
            out[i] = signed / self._scale
        return out


CODECS: dict[str, type[PerValueCodec]] = {"per-value/1": PerValueCodec}


def make_codec(params: CodecParams, modulus: int) -> Codec:
    return CODECS[params.name](params, modulus)


def weighted_values(delta: FloatArray, weight: int, params: CodecParams) -> tuple[FloatArray, int]:
    """The vector an agent encrypts: clip(delta) * weight, then the weight itself.

    Returns the vector and how many coordinates clipping changed (worth a log line:
    many clipped values mean ``clip`` is too small for the learning rate).
    """
    if not 1 <= weight <= params.max_weight:
        raise CodecError(f"weight {weight} outside [1, {params.max_weight}]")
    delta = np.asarray(delta, dtype=np.float64)
    clipped = np.clip(delta, -params.clip, params.clip)
    n_clipped = int(np.count_nonzero(clipped != delta))
    return np.append(clipped * weight, float(weight)), n_clipped


def weighted_mean(summed: FloatArray) -> tuple[FloatArray, float]:
    """Split a decoded sum into (sum_k n_k delta_k / sum_k n_k, sum_k n_k)."""
    total_weight = float(summed[-1])
    if total_weight < 1:
        raise CodecError(f"decoded total weight {total_weight} is not positive")
    return summed[:-1] / total_weight, total_weight
