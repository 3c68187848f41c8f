"""Item 8 of issue 8: a logged-in agent flooding 4 MiB payloads cannot blow up the aggregator.

Real processes on 127.0.0.1, started by ``benchmarks.flood`` (whose full 60 s run
is ``python -m fedmq.benchmarks.flood``): the broker with logins, the ACL and a payload
cap raised to let 4 MiB through (the embedded one, and Mosquitto with the
generated config); the aggregator (``fedmq aggregator``); three honest agents;
one enrolled agent flooding its update topic with payloads whose header, key
fingerprint and every ciphertext are valid (only the signature is not).

Before the fix the aggregator behind Mosquitto grew past 2 GB in 10 s (the
inbox was bounded only in messages, 100,000 of them) and a round took 17.8 s
against its 5 s deadline. The broker itself must stay bounded too: Mosquitto
2.0.11 queued the flood for the aggregator up to 1.8 GB in 10 s (8 GB in 60 s)
until the generated config set ``memory_limit``.
"""

from __future__ import annotations

import pytest
from mqtt_support import mosquitto_binary

from fedmq.benchmarks.flood import FloodOptions, Gateway, run_phase

pytestmark = pytest.mark.slow

RSS_LIMIT_MB = 200
BROKER_RSS_LIMIT_MB = 700  # Mosquitto's generated memory_limit is 512 MiB
HONEST = ["dev-0", "dev-1", "dev-2"]


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_flood_keeps_memory_bounded_and_rounds_within_their_deadline(tmp_path, broker):
    if broker == "mosquitto":
        mosquitto_binary()  # skips without it
    options = FloodOptions(seconds=10.0, agents=len(HONEST), round_timeout=10.0,
                           key_bits=1024, broker=broker)
    phase = run_phase(Gateway(tmp_path, options), "flood", flood=True)
    assert phase.sent >= 20, "the flooder did not get its payloads into the broker"
    assert phase.rss_peak_mb < RSS_LIMIT_MB, phase
    assert 0 < phase.broker_rss_peak_mb < BROKER_RSS_LIMIT_MB, phase
    assert len(phase.rounds) >= 2, "rounds stopped closing during the flood"
    slack = 1.0  # the decryption, the checkpoint and model writes after the last drain
    for row in phase.rounds:
        assert float(row["seconds"]) <= options.round_timeout + options.drain_seconds + slack, row
        assert sorted(row["agents"].split()) == HONEST, row  # every honest update counted
