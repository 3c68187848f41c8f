"""kill -9 of a real aggregator process at random points while pre-signed updates stream in.

A load generator on a real broker publishes genuine signed updates (benchmarks.inbound_fleet)
for the aggregator's own run; the aggregator is SIGKILLed several times at random moments
and restarted. What it counted before each kill, as seen from outside (the device ids its
signed progress topic listed), is never sent again: a counted update the restart lost would
leave the round one short of the quorum of every device, and with no extension the run would
fail. The final round holds every device once, and its decrypted sum is exactly the sum of
the distinct updates (a doubly counted one would show in the weight and the mean).
"""

from __future__ import annotations

import csv
import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_support import Probe
from support import AGGREGATOR_SIGNER, fedmq_process, wait_until

from fedmq.aggregator.allowlist import enroll_many
from fedmq.benchmarks.inbound_fleet import build_fleet
from fedmq.models import load_model
from fedmq.protocol.crypto.codec import mean_from_sums
from fedmq.protocol.crypto.paillier import private_key_to_dict
from fedmq.protocol.crypto.signing import public_key_hex
from fedmq.protocol.messages import StatusMessage
from fedmq.protocol.progress import ProgressMessage
from fedmq.protocol.topics import Topics

pytestmark = pytest.mark.slow
DEVICES, D, KILLS = 300, 3, 4
TOPICS = Topics("gc")


def _config(tmp_path: Path, port: int, keypair, agents: dict[str, str]) -> Path:
    state = tmp_path / "gateway"
    state.mkdir()
    (state / "paillier.key").write_text(json.dumps(private_key_to_dict(keypair[1])))
    (state / "paillier.key").chmod(0o600)
    (state / "signing.key").write_bytes(AGGREGATOR_SIGNER.to_pem())
    (state / "signing.key").chmod(0o600)
    enroll_many(state / "allow.json", sorted(agents.items()))
    features = ", ".join(f'"x{i}"' for i in range(D))
    config = tmp_path / "aggregator.toml"
    config.write_text(f"""
[fleet]
name = "{TOPICS.fleet}"
[mqtt]
port = {port}
[keys]
private_key_file = "{state / 'paillier.key'}"
bits = 512
signing_key_file = "{state / 'signing.key'}"
allow_list_file = "{state / 'allow.json'}"
[model]
kind = "logistic"
features = [{features}]
n_classes = 2
center = [{", ".join(["0.0"] * D)}]
scale = [{", ".join(["1.0"] * D)}]
[statistics]
enabled = false
[codec]
max_agents = {DEVICES}
[robust]
rule = "mean"
[rounds]
rounds = 1
round_timeout = 60
quorum = {DEVICES}
min_agents = {DEVICES}
start_timeout = 60
max_extensions = 0
final_evaluation = false
[limits]
commit_updates = 16
commit_seconds = 0.05
[output]
state_dir = "{state}"
""")
    return config


class Watch:
    """The devices the aggregator's signed progress listed as counted, and its run id."""

    def __init__(self, port: int) -> None:
        self.counted: set[str] = set()
        self.run_id = ""
        self.lock = threading.Lock()
        self.probe = Probe(port, "watch")
        self.probe.client.on_message = self._on_message
        assert self.probe.connect()
        assert self.probe.subscribe(TOPICS.progress)

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        progress = ProgressMessage.from_bytes(bytes(msg.payload),
                                              verify_with=AGGREGATOR_SIGNER.public_key)
        with self.lock:
            self.run_id = progress.run_id
            self.counted |= set(progress.reported)

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.counted)


def test_kill_9_at_random_points_loses_no_counted_update_and_counts_none_twice(
        tmp_path, broker_port, keypair):
    pick = random.Random(24)
    seed_fleet = build_fleet(bits=512, d=D, updates=DEVICES, key=keypair, fleet=TOPICS.fleet)
    agents = {a: public_key_hex(k) for a, k in seed_fleet.allow_list.items()}
    config = _config(tmp_path, broker_port, keypair, agents)
    sender = Probe(broker_port, "load-generator")
    assert sender.connect()
    for agent in agents:  # what a fleet's agents leave on the broker: they are online
        sender.publish(TOPICS.status(agent), StatusMessage(agent, "online").to_bytes(),
                       retain=True)
    watch = Watch(broker_port)
    log = tmp_path / "aggregator.log"
    proc = fedmq_process("aggregator", "--config", str(config), log=log)
    try:
        wait_until(lambda: watch.run_id, "round 1 to open", timeout=60)
        # The same devices' genuine updates, for the run the aggregator opened.
        fleet = build_fleet(bits=512, d=D, updates=DEVICES, key=keypair, fleet=TOPICS.fleet,
                            run_id=watch.run_id)
        payloads = dict(fleet.payloads)
        grew: list[int] = []
        seen: list[int] = []  # devices shown counted when each kill came
        for kill in range(KILLS):
            # Round 1 is open again (restored from the durable batches) and listening.
            wait_until(lambda n=kill + 1: log.read_text().count("round 1 open") == n,
                       f"round 1 open in process {kill + 1}", timeout=60)
            counted = watch.snapshot()
            todo = [a for a in payloads if a not in counted]
            share = todo[:pick.randrange(len(todo) // 4, len(todo) // 2)]
            stop = threading.Event()

            def stream(agents: list[str] = share, stop: threading.Event = stop) -> None:
                for agent in agents:  # a steady stream, cut by the kill
                    if stop.wait(0.002):
                        return
                    sender.client.publish(TOPICS.update(agent), payloads[agent], qos=1)
            streamer = threading.Thread(target=stream)
            streamer.start()
            time.sleep(pick.uniform(0.1, 0.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stop.set()
            streamer.join(10)
            before = watch.snapshot()
            grew.append(len(before) - len(counted))
            seen.append(len(before))
            assert len(before) < DEVICES, "the round closed before the kill: send less"
            proc = fedmq_process("aggregator", "--config", str(config), log=log)
        assert sum(grew) > 0, "no kill came while updates were being counted"
        # Only what was never seen counted is sent again (as agents answer the round's
        # re-announcement, until it closes): a lost counted update fails the run.
        while proc.poll() is None:
            counted = watch.snapshot()
            for agent in [a for a in payloads if a not in counted]:
                sender.client.publish(TOPICS.update(agent), payloads[agent], qos=1)
            time.sleep(2.0)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        sender.close()
        watch.probe.close()
    text = log.read_text()
    assert text.count("resuming run") == KILLS and "Traceback" not in text
    # Every restart read back at least what the progress topic had shown counted.
    restored = [int(line.split(": ")[-1].split()[0]) for line in text.splitlines()
                if "accepted updates restored" in line]
    assert len(restored) == KILLS and all(r >= s for r, s in zip(restored, seen, strict=True))
    with (tmp_path / "gateway" / "latest" / "rounds.csv").open() as fh:
        [row] = list(csv.DictReader(fh))
    reported = row["agents"].split()
    assert sorted(reported) == sorted(payloads) and len(reported) == DEVICES
    training, _ = fleet.plain_sums
    mean, weight = mean_from_sums(training, fleet.codec)
    assert int(row["total_weight"]) == weight
    _, params, _ = load_model(tmp_path / "gateway" / "latest" / "global_model.npz")
    np.testing.assert_allclose(params, mean, rtol=0, atol=fleet.codec.resolution)
