from __future__ import annotations

import random

import gmpy2
import pytest
from phe import paillier

from fedmq.protocol.crypto.obfuscation import DjnObfuscators, DjnTable
from fedmq.simulation.shards import SharedDjn, connect_delays, split


def test_split_keeps_every_item_once_in_near_equal_contiguous_parts():
    items = [f"dev-{i:03d}" for i in range(11)]
    parts = split(items, 3)
    assert [len(p) for p in parts] == [4, 4, 3]
    assert [x for p in parts for x in p] == items
    assert split(items[:2], 8) == [["dev-000"], ["dev-001"]]  # no empty worker


@pytest.mark.parametrize("n, spread", [(1, 2.0), (7, 0.5), (500, 2.5)])
def test_connect_delays_spread_one_agent_per_slot(n, spread):
    delays = connect_delays(n, spread, random.Random(3))
    assert len(delays) == n
    assert all(0 <= d < spread for d in delays)
    slot = spread / n
    # one agent in each slot of spread / n: never a burst of them at one instant
    assert all(i * slot <= d < (i + 1) * slot for i, d in enumerate(delays))
    assert connect_delays(n, 0.0, random.Random(3)) == [0.0] * n


def test_agents_of_one_process_share_the_public_table_never_an_obfuscator():
    public, private = paillier.generate_paillier_keypair(n_length=512)
    other, _ = paillier.generate_paillier_keypair(n_length=512)
    shared = SharedDjn()
    a, b = shared.source("djn")(public).inner, shared.source("djn")(public).inner
    assert isinstance(a, DjnObfuscators) and isinstance(b, DjnObfuscators)
    assert a.table is b.table  # one ~2 MB table per key and process, not per agent
    c = shared.source("djn")(other).inner
    assert isinstance(c, DjnObfuscators) and c.table is not a.table
    drawn = [a.next() for _ in range(20)] + [b.next() for _ in range(20)]
    assert len(set(drawn)) == 40  # fresh exponents: no obfuscator is ever handed out twice
    # and they are valid obfuscators: Enc(m) with them decrypts to m
    for i, r in enumerate(drawn[:5]):
        c_raw = int(gmpy2.f_mod((1 + (i + 7) * public.n) * r, public.nsquare))
        assert private.raw_decrypt(c_raw) == i + 7
    assert not isinstance(shared.source("standard")(public).inner, DjnObfuscators)


def test_the_agents_of_a_worker_compute_one_obfuscator_at_a_time(monkeypatch):
    """A round starts every agent of a worker at once; computing side by side, 500
    threads starved the worker's network thread of the GIL and amqtt gave up on the
    PUBACKs (2,853 in a 1,000-agent run at d = 100). The real DJN computation, counted."""
    import sys
    import threading

    public, _ = paillier.generate_paillier_keypair(n_length=1024)
    inside, most = [0], [0]
    count = threading.Lock()
    real_next = DjnObfuscators.next

    def counted(self):
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return real_next(self)
        finally:
            with count:
                inside[0] -= 1

    monkeypatch.setattr(DjnObfuscators, "next", counted)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, as 500 busy threads do
    try:
        shared = SharedDjn()
        sources = [shared.source("djn")(public) for _ in range(8)]
        drawn: list[object] = []
        threads = [threading.Thread(target=lambda s=s: drawn.extend(s.next() for _ in range(15)))
                   for s in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert len(set(drawn)) == 8 * 15 and most[0] == 1


def test_a_table_of_another_key_is_refused():
    public, _ = paillier.generate_paillier_keypair(n_length=512)
    other, _ = paillier.generate_paillier_keypair(n_length=512)
    with pytest.raises(ValueError, match="another public key"):
        DjnObfuscators(public, table=DjnTable(other))


def test_agents_of_one_worker_cost_one_thread_each_not_three():
    import threading

    from support import agent_config, local_data, wait_until

    from fedmq.broker.config import BrokerSettings
    from fedmq.broker.embedded import EmbeddedBroker, free_port
    from fedmq.edge_agent.agent import EdgeAgent
    from fedmq.simulation.shards import SharedThreads, _start_staggered

    port, n = free_port(), 20
    with EmbeddedBroker(BrokerSettings(port=port)):
        before = threading.active_count()
        shared = SharedThreads()
        agents = [EdgeAgent(agent_config(port, f"thr-{i}"), data=local_data(i, 20),
                            network=shared.network, filler=shared.filler) for i in range(n)]
        stop = threading.Event()
        threads = _start_staggered(agents, 0.2, 0, stop)
        try:
            wait_until(lambda: all(a._link.connected for a in agents), "agents connected")
            # its round loop; the network and the obfuscator threads are the worker's
            assert threading.active_count() - before <= n + 2
        finally:
            stop.set()
            for a in agents:
                a.stop()
            for t in threads:
                t.join(5)
            assert not any(t.is_alive() for t in threads)  # stop() wakes the idle agents
            shared.close()


def test_a_spawned_process_reports_its_own_peak_memory_not_its_parents():
    import multiprocessing

    from fedmq.simulation.shards import peak_rss_bytes

    ballast = bytearray(300 * 2**20)  # the parent's peak: 300 MB more than a fresh child's
    ballast[::4096] = b"x" * len(ballast[::4096])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        child = pool.apply(peak_rss_bytes)
    assert peak_rss_bytes() > 300 * 2**20 > child
    del ballast
