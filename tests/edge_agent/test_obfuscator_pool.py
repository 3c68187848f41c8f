from __future__ import annotations

import itertools
import threading

import pytest

from fedmq.edge_agent.obfuscator_pool import ObfuscatorPool


class Counting:
    """A stand-in source yielding distinct integers, so reuse would be visible."""

    def __init__(self) -> None:
        self._next = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._next)


@pytest.fixture
def pool():
    p = ObfuscatorPool(Counting(), target=10)
    yield p
    p.close()


def test_pool_fills_to_its_target_in_the_background(pool):
    assert pool.wait_full(timeout=5)
    assert pool.ready == 10 and pool.produced == 10


def test_values_are_handed_out_once_and_never_again(pool):
    pool.wait_full(timeout=5)
    seen: list[int] = []
    for k in (4, 6, 7, 3):
        seen.extend(pool.take(k))
    assert len(seen) == len(set(seen)) == 20


def test_shortfall_is_computed_inline_and_counted():
    p = ObfuscatorPool(Counting(), target=0)
    try:
        got = p.take(5)
        assert len(set(got)) == 5 and p.inline == 5 and p.ready == 0
    finally:
        p.close()


def test_raising_the_target_refills(pool):
    pool.wait_full(timeout=5)
    pool.set_target(25)
    assert pool.wait_full(timeout=5) and pool.ready == 25


def test_filling_pauses_after_take_until_refill(pool):
    """Encryption right after take() must not share the CPU with the filler."""
    pool.wait_full(timeout=5)
    pool.take(4)
    assert not pool.wait_full(timeout=0.2) and pool.ready == 6
    pool.refill()
    assert pool.wait_full(timeout=5) and pool.ready == 10


def test_close_drops_every_precomputed_value(pool):
    pool.wait_full(timeout=5)
    pool.close()
    assert pool.ready == 0


def test_one_shared_filler_thread_fills_many_pools_to_their_targets():
    from fedmq.edge_agent.obfuscator_pool import SharedFiller

    before = threading.active_count()
    filler = SharedFiller()
    source = Counting()
    pools = [ObfuscatorPool(source, target=5, filler=filler) for _ in range(40)]
    try:
        assert threading.active_count() - before == 1  # not one thread per pool
        assert all(p.wait_full(timeout=5) for p in pools)
        taken = pools[0].take(5)  # paused until refill: the filler leaves it alone
        assert pools[0].ready == 0
        pools[0].refill()
        assert pools[0].wait_full(timeout=5)
        values = taken + [v for p in pools for v in p.take(5)]
        assert len(values) == len(set(values)) == 41 * 5  # each value handed out once
    finally:
        for p in pools:
            p.close()
        filler.close()
