from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.protocol.crypto.packing import SlotLayout
from fedmq.protocol.errors import CodecError, CodecOverflowError


@given(st.integers(1, 40).flatmap(
    lambda w: st.tuples(st.just(w), st.integers(1, 12),
                        st.lists(st.integers(0, (1 << w) - 1), min_size=1, max_size=50))))
def test_pack_unpack_round_trip(case):
    w, slots, fields = case
    layout = SlotLayout(slot_bits=w, slots=slots)
    packed = layout.pack(fields)
    assert len(packed) == layout.plaintext_count(len(fields))
    assert all(p < 1 << layout.total_bits for p in packed)
    assert layout.unpack(packed, len(fields)) == fields


def test_packed_integers_add_slot_by_slot():
    layout = SlotLayout(slot_bits=8, slots=4)
    a, b = [1, 2, 3, 4, 5], [10, 20, 30, 40, 50]
    total = [x + y for x, y in zip(layout.pack(a), layout.pack(b), strict=True)]
    assert layout.unpack(total, 5) == [11, 22, 33, 44, 55]


def test_field_too_wide_for_its_slot_raises():
    with pytest.raises(CodecOverflowError):
        SlotLayout(slot_bits=8, slots=2).pack([256])
    with pytest.raises(CodecOverflowError):
        SlotLayout(slot_bits=8, slots=2).pack([-1])


def test_carry_out_of_the_last_slot_is_detected():
    layout = SlotLayout(slot_bits=8, slots=2)
    with pytest.raises(CodecOverflowError, match="beyond its last slot"):
        layout.unpack([1 << 16], 2)


def test_data_in_padding_slots_is_detected():
    layout = SlotLayout(slot_bits=8, slots=4)
    with pytest.raises(CodecOverflowError, match="padding"):
        layout.unpack([layout.pack([1, 2])[0] | (7 << 24)], 2)


def test_wrong_plaintext_count_is_refused():
    with pytest.raises(CodecError):
        SlotLayout(slot_bits=8, slots=4).unpack([0, 0], 3)
