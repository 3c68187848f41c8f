"""Slot packing: many small non-negative integers in one big integer, and back.

A plaintext holds ``slots`` fields of ``slot_bits`` bits each, slot 0 in the
least significant bits. Adding two packed integers adds every slot at once, as
long as no slot sum reaches 2^slot_bits: the codec sizes ``slot_bits`` so that
the sum of the declared maximum number of legal updates never does (the
"headroom" of BatchCrypt). Pure integer arithmetic, no crypto here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedmq.protocol.errors import CodecError, CodecOverflowError


@dataclass(frozen=True)
class SlotLayout:
    slot_bits: int
    slots: int

    def __post_init__(self) -> None:
        if self.slot_bits < 1 or self.slots < 1:
            raise CodecError("a slot layout needs slot_bits >= 1 and slots >= 1")

    @property
    def total_bits(self) -> int:
        return self.slot_bits * self.slots

    def plaintext_count(self, n_values: int) -> int:
        return -(-n_values // self.slots)

    def pack(self, fields: Sequence[int]) -> list[int]:
        """Pack non-negative fields below 2^slot_bits, ``slots`` per integer."""
        w, limit = self.slot_bits, 1 << self.slot_bits
        out = []
        for start in range(0, len(fields), self.slots):
            acc = 0
            # Highest slot first so each shift moves every field already placed.
            for v in reversed(fields[start:start + self.slots]):
                if not 0 <= v < limit:
                    raise CodecOverflowError(f"field {v} does not fit a {w}-bit slot")
                acc = (acc << w) | v
            out.append(acc)
        return out

    def unpack(self, packed: Sequence[int], n_fields: int) -> list[int]:
        """Split integers back into fields; anything above the last slot, or in
        a padding slot, can only come from a carry or a forged plaintext."""
        if len(packed) != self.plaintext_count(n_fields):
            raise CodecError(
                f"{n_fields} values need {self.plaintext_count(n_fields)} plaintexts, "
                f"got {len(packed)}")
        w, mask = self.slot_bits, (1 << self.slot_bits) - 1
        out: list[int] = []
        for i, p in enumerate(packed):
            if p < 0 or p >> self.total_bits:
                raise CodecOverflowError(f"plaintext {i} carries beyond its last slot")
            used = min(self.slots, n_fields - len(out))
            out.extend((p >> (j * w)) & mask for j in range(used))
            if p >> (used * w):
                raise CodecOverflowError(f"plaintext {i} has data in its padding slots")
        return out
