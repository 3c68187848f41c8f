"""Fixed-point codecs: model updates <-> plaintext integers in Z_n, with declared bounds.

Every agent quantizes with the SAME scale, announced with the public key: a
delta is clipped to [-clip, clip] and rounded to a multiple of
clip * 2^-precision_bits, giving an integer q with |q| <= 2^precision_bits.
The agent then multiplies q by its integer sample count w (the FedAvg weight)
and appends w itself, so the aggregator's decrypted sum is exactly
(sum_k w_k q_k, sum_k w_k) in integers and the weighted mean needs one division.
A per-value float exponent (phe's default) would leak magnitude and make sums
of mixed exponents impossible without decryption.

The bounds are the contract: every integer an agent sends lies in
[-B, B] with B = max_weight * 2^precision_bits, and at most ``max_agents`` are
summed. A decrypted sum outside n_summed * B can only mean overflow or a
forged update, so decode raises instead of returning a wrapped number.

Two codecs share that integer mapping:

- ``PerValueCodec`` spends one plaintext (so one ciphertext) on each value;
  negatives as n - |x|. The baseline.
- ``PackedCodec`` (default) shifts every integer by +B so it is non-negative,
  and packs ``slots`` of them into one plaintext, each slot wide enough for
  the sum of max_agents shifted values (2 * max_agents * B). Decoding
  subtracts n_summed * B per slot. One ciphertext then carries ~46 values at
  2048 bits instead of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from fedmq.protocol.crypto.packing import SlotLayout
from fedmq.protocol.errors import CodecError, CodecOverflowError, ProtocolError

FloatArray = NDArray[np.float64]

CODEC_NAMES = ("packed/1", "per-value/1")


@dataclass(frozen=True)
class CodecParams:
    """Fleet-wide encoding contract, announced next to the public key."""

    name: str = "packed/1"
    precision_bits: int = 20
    clip: float = 10.0
    max_weight: int = 8_000
    max_agents: int = 1_000

    def __post_init__(self) -> None:
        if self.name not in CODEC_NAMES:
            raise CodecError(f"unknown codec {self.name!r}; known: {list(CODEC_NAMES)}")
        if not 8 <= self.precision_bits <= 40:
            raise CodecError("precision_bits must be between 8 and 40")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise CodecError("clip must be a positive finite number")
        if not 1 <= self.max_weight <= 2**24 or not 1 <= self.max_agents <= 2**24:
            raise CodecError("max_weight and max_agents must be between 1 and 2^24")

    @property
    def bound_int(self) -> int:
        """B: the largest |integer| one agent may send (a weighted delta or the weight)."""
        return self.max_weight << self.precision_bits

    @property
    def resolution(self) -> float:
        """Worst-case error of a decoded mean: half a quantization step."""
        return self.clip * 2.0 ** -(self.precision_bits + 1)

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
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"bad codec parameters: {exc}") from exc

    def digest(self, key_fingerprint: str) -> str:
        """Names this exact contract (params + key): updates must carry the same digest."""
        canon = json.dumps({"codec": self.to_dict(), "key": key_fingerprint}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:32]


def quantize_update(delta: FloatArray, weight: int,
                    params: CodecParams) -> tuple[list[int], int]:
    """The integers an agent encrypts: w * q(clip(delta)), then w itself.

    Returns them and how many coordinates clipping changed (worth a log line:
    many clipped values mean ``clip`` is too small for the learning rate).
    """
    if not 1 <= weight <= params.max_weight:
        raise CodecError(f"weight {weight} outside [1, {params.max_weight}]")
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 1 or not np.all(np.isfinite(delta)):
        raise CodecError("the update must be a finite 1-D vector")
    clipped = np.clip(delta, -params.clip, params.clip)
    n_clipped = int(np.count_nonzero(clipped != delta))
    # |q| <= 2^40 and w <= 2^24: the products fit int64 exactly.
    q = np.rint(clipped * (2.0**params.precision_bits / params.clip)).astype(np.int64)
    return [*(q * weight).tolist(), weight], n_clipped


class FixedPoint(Protocol):
    """A fixed-point scale: |value| <= clip maps to |q| <= 2^precision_bits."""

    @property
    def precision_bits(self) -> int: ...

    @property
    def clip(self) -> float: ...


def mean_from_sums(sums: Sequence[int], params: FixedPoint) -> tuple[FloatArray, int]:
    """(sum_k w_k q_k / sum_k w_k scaled back to floats, sum_k w_k) from exact sums."""
    total_weight = int(sums[-1])
    if total_weight < 1:
        raise CodecError(f"decoded total weight {total_weight} is not positive")
    denom = total_weight << params.precision_bits
    # int / int is correctly rounded in Python, so no precision is lost before the scale.
    mean = np.array([s / denom for s in sums[:-1]], dtype=np.float64) * params.clip
    return mean, total_weight


class Codec(Protocol):
    """What agents and the aggregator need from any codec."""

    params: CodecParams
    modulus: int

    def plaintext_count(self, n_values: int) -> int:
        """How many plaintexts (so ciphertexts) ``n_values`` integers need."""
        ...

    def encode(self, values: Sequence[int]) -> list[int]:
        """Map integers in [-B, B] to plaintexts in [0, n); raise beyond the bound."""
        ...

    def decode(self, plaintexts: Sequence[int], n_values: int, n_summed: int) -> list[int]:
        """Exact signed sums of ``n_summed`` encodings; raise on any overflow."""
        ...

    def describe(self) -> dict[str, int]:
        """Layout facts derived from params and key, announced for cross-checking."""
        ...


def _checked(values: Sequence[int], bound: int) -> list[int]:
    """Exact Python ints within [-bound, bound]; a float here would be a caller bug."""
    try:
        ints = [operator.index(v) for v in values]
    except TypeError as exc:
        raise CodecError(f"codecs take integers from quantize_update: {exc}") from exc
    for v in ints:
        if not -bound <= v <= bound:
            raise CodecOverflowError(f"value {v} beyond the declared bound {bound}")
    return ints


def _check_summands(n_summed: int, params: CodecParams) -> None:
    if not 1 <= n_summed <= params.max_agents:
        raise CodecOverflowError(
            f"{n_summed} summed updates, the contract allows 1..{params.max_agents}")


class PerValueCodec:
    """One integer per Paillier plaintext; negatives as n - |x| (mod n)."""

    def __init__(self, params: CodecParams, modulus: int) -> None:
        # A sum of max_agents values must stay in (-n/2, n/2) to decode unambiguously.
        if params.max_agents * params.bound_int >= modulus // 2:
            raise CodecError("key too small for max_agents * value bound; use a larger key")
        self.params = params
        self.modulus = modulus

    def plaintext_count(self, n_values: int) -> int:
        return n_values

    def encode(self, values: Sequence[int]) -> list[int]:
        return [v % self.modulus for v in _checked(values, self.params.bound_int)]

    def decode(self, plaintexts: Sequence[int], n_values: int, n_summed: int) -> list[int]:
        if len(plaintexts) != n_values:
            raise CodecError(f"expected {n_values} plaintexts, got {len(plaintexts)}")
        _check_summands(n_summed, self.params)
        n, limit = self.modulus, n_summed * self.params.bound_int
        out = []
        for i, m in enumerate(plaintexts):
            signed = m - n if m > n // 2 else m
            if abs(signed) > limit:
                raise CodecOverflowError(f"decoded value {i} lies outside the bounds of the sum")
            out.append(signed)
        return out

    def describe(self) -> dict[str, int]:
        return {"slot_bits": self.modulus.bit_length() - 1, "slots": 1}


class SlotContract(Protocol):
    """What a packed codec needs of its parameters: the per-device bound and the summands."""

    @property
    def bound_int(self) -> int: ...

    @property
    def max_agents(self) -> int: ...


class _Slots:
    """Many offset integers per plaintext, each slot with headroom for max_agents summands."""

    def __init__(self, contract: SlotContract, modulus: int) -> None:
        self._bound, self._max_agents = contract.bound_int, contract.max_agents
        # Largest legal slot sum: max_agents values shifted into [0, 2B].
        slot_bits = (2 * self._max_agents * self._bound).bit_length()
        # Keep every packed plaintext below 2^(bits(n)-1) < n, so no sum wraps mod n.
        slots = (modulus.bit_length() - 1) // slot_bits
        if slots < 1:
            raise CodecError(f"key too small for {slot_bits}-bit slots; use a larger key")
        self.modulus = modulus
        self.layout = SlotLayout(slot_bits=slot_bits, slots=slots)

    def plaintext_count(self, n_values: int) -> int:
        return self.layout.plaintext_count(n_values)

    def encode(self, values: Sequence[int]) -> list[int]:
        bound = self._bound
        return self.layout.pack([v + bound for v in _checked(values, bound)])

    def decode(self, plaintexts: Sequence[int], n_values: int, n_summed: int) -> list[int]:
        if not 1 <= n_summed <= self._max_agents:
            raise CodecOverflowError(
                f"{n_summed} summed updates, the contract allows 1..{self._max_agents}")
        if any(not 0 <= m < self.modulus for m in plaintexts):
            raise CodecError("plaintext outside [0, n)")
        offset = n_summed * self._bound
        out = []
        for i, field in enumerate(self.layout.unpack(plaintexts, n_values)):
            # Legal sums lie in [0, 2 * offset]; anything else is a carry or a forgery.
            if field > 2 * offset:
                raise CodecOverflowError(f"decoded value {i} lies outside the bounds of the sum")
            out.append(field - offset)
        return out

    def describe(self) -> dict[str, int]:
        return {"slot_bits": self.layout.slot_bits, "slots": self.layout.slots}


class PackedCodec(_Slots):
    """The training codec: packed weighted deltas (BatchCrypt-style)."""

    def __init__(self, params: CodecParams, modulus: int) -> None:
        super().__init__(params, modulus)
        self.params = params


CODECS: dict[str, type[PerValueCodec] | type[PackedCodec]] = {
    "packed/1": PackedCodec, "per-value/1": PerValueCodec}


def make_codec(params: CodecParams, modulus: int) -> Codec:
    return CODECS[params.name](params, modulus)
