"""Trustees of a simulated fleet: the key dealt t-of-k here, each trustee its own process.

The simulation is the dealer (as ``fedmq init gateway --trustees`` is for a real
gateway): it writes each trustee's bundle under ``<run>/trustees/<id>/`` and the
aggregator's public ``trustees.json``, and starts ``fedmq trustee`` once per
trustee, so every decryption of the run goes through real trustee processes over
the run's broker. The aggregator process never holds the private key.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.aggregator.trustees import TrusteeInfo, TrusteeSet
from fedmq.broker.embedded import stop_process
from fedmq.protocol.crypto.signing import Ed25519PublicKey, public_key_hex
from fedmq.protocol.crypto.threshold import KeyShare, deal
from fedmq.protocol.errors import FedmqError
from fedmq.protocol.topics import Topics
from fedmq.runtime.files import create_signer, write_text_atomic
from fedmq.runtime.transport import MqttSettings

MIN_GROUP = 2


@dataclass
class SimulatedTrustees:
    """The dealt key's public side, and the trustees' bundles and processes."""

    ids: tuple[str, ...]
    trustee_set: TrusteeSet
    path: Path  # the aggregator's trustees.json
    bundles: dict[str, Path]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seconds_to_deal: float = 0.0


def deal_trustees(out_dir: Path, *, trustees: int, threshold: int, bits: int
                  ) -> tuple[SimulatedTrustees, list[KeyShare]]:
    """Deal the key; write the aggregator's trustees.json and each trustee's share and
    signing key. The shares are returned for ``write_configs`` and then dropped."""
    t0 = time.perf_counter()
    public, shares = deal(bits, trustees, threshold)
    seconds = time.perf_counter() - t0
    ids = tuple(f"trustee-{i}" for i in range(1, trustees + 1))
    infos, bundles = {}, {}
    for trustee, share in zip(ids, shares, strict=True):
        bundle = out_dir / "trustees" / trustee
        write_text_atomic(bundle / "share.json", json.dumps(share.to_dict()) + "\n",
                          private=True)
        infos[trustee] = TrusteeInfo(share.index, create_signer(bundle / "signing.key")
                                     .public_key)
        bundles[trustee] = bundle
    found = TrusteeSet(public, infos)
    path = out_dir / "aggregator" / "trustees.json"
    write_text_atomic(path, json.dumps(found.to_dict(), indent=1) + "\n")
    for bundle in bundles.values():  # each trustee checks the others' votes on the log
        write_text_atomic(bundle / "trustees.json", json.dumps(found.to_dict()) + "\n")
    return SimulatedTrustees(ids, found, path, bundles, seconds_to_deal=seconds), shares


def _mqtt_toml(settings: MqttSettings, bundle: Path) -> str:
    lines = [f'host = "{settings.host}"', f"port = {settings.port}",
             f"keepalive = {settings.keepalive}",
             f"connect_timeout = {settings.connect_timeout}"]
    if settings.username:
        lines.append(f'username = "{settings.username}"')
    if settings.password:
        write_text_atomic(bundle / "mqtt.password", settings.password + "\n", private=True)
        lines.append('password_file = "mqtt.password"')
    return "\n".join(lines)


def write_configs(sim: SimulatedTrustees, *, topics: Topics, aggregator_key: str,
                  enrolled: Mapping[str, Ed25519PublicKey],
                  mqtt: Mapping[str, MqttSettings]) -> None:
    """Each trustee's trustee.toml and its own allow-list (the fleet's devices, as
    ``fedmq trustee enroll --from-file`` would write it)."""
    agents = {a: public_key_hex(k) for a, k in sorted(enrolled.items())}
    for trustee, bundle in sim.bundles.items():
        write_text_atomic(bundle / "allow_list.json", json.dumps(
            {"schema": "fedmq.allow-list/1", "agents": agents}) + "\n")
        write_text_atomic(bundle / "trustee.toml", "\n".join([
            "[trustee]", f'id = "{trustee}"', 'share_file = "share.json"',
            'signing_key_file = "signing.key"', 'allow_list_file = "allow_list.json"',
            'trustees_file = "trustees.json"',
            'state_dir = "state"', f"min_group = {MIN_GROUP}", "",
            "[fleet]", f'name = "{topics.fleet}"', f'topic_prefix = "{topics.prefix}"',
            f'aggregator_signing_key = "{aggregator_key}"', "",
            "[mqtt]", _mqtt_toml(mqtt[trustee], bundle), ""]))


def start(sim: SimulatedTrustees, trustee: str, *, verbose: bool = False) -> None:
    """``fedmq trustee`` for ``trustee`` (again, after a kill: it keeps its ledger)."""
    bundle = sim.bundles[trustee]
    with (bundle / "trustee.log").open("ab") as log:
        sim.processes[trustee] = subprocess.Popen(
            [sys.executable, "-m", "fedmq", *(["-v"] if verbose else []), "trustee",
             "--config", str(bundle / "trustee.toml")], stdout=log, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running(sim: SimulatedTrustees, *, verbose: bool = False) -> Iterator[SimulatedTrustees]:
    """Every trustee's process, stopped (SIGTERM) when the run ends."""
    try:
        for trustee in sim.bundles:
            start(sim, trustee, verbose=verbose)
        time.sleep(0.2)
        dead = [t for t, p in sim.processes.items() if p.poll() is not None]
        if dead:
            raise FedmqError(f"trustee {dead[0]} did not start: "
                             + (sim.bundles[dead[0]] / "trustee.log").read_text()[-500:])
        yield sim
    finally:
        for proc in sim.processes.values():
            stop_process(proc)
