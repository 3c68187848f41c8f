"""Trustees for tests: a 512-bit threshold key and in-process trustees on a test broker.

With ``FEDMQ_TEST_TRUSTEES=1`` every aggregator the shared fixtures make holds no private
key and asks three trustees (threshold 2) on its broker for every decryption, so the
relay, culprit, DP and statistics suites run with trustees on (``make test-trustees``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from support import AGGREGATOR_SIGNER, EnrolledFleet, signer_for

from fedmq.aggregator.allowlist import AllowListFile
from fedmq.aggregator.trustees import TrusteeInfo, TrusteeSet
from fedmq.protocol.crypto.paillier import PaillierPrivateKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey
from fedmq.protocol.crypto.threshold import (
    KeyShare,
    ThresholdPublic,
    deal_from_primes,
    generate_safe_prime,
)
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings
from fedmq.trustee.config import TrusteeConfig
from fedmq.trustee.service import Trustee

TRUSTEES_ON = os.environ.get("FEDMQ_TEST_TRUSTEES") == "1"


@dataclass(frozen=True)
class ThresholdKey:
    public: ThresholdPublic
    shares: tuple[KeyShare, ...]
    private: PaillierPrivateKey  # the whole key, for tests that compare or use it directly


def make_threshold_key(bits: int = 512, trustees: int = 3, threshold: int = 2) -> ThresholdKey:
    p, q = generate_safe_prime(bits // 2), generate_safe_prime(bits // 2)
    while q == p:
        q = generate_safe_prime(bits // 2)
    public, shares = deal_from_primes(p, q, trustees, threshold)
    return ThresholdKey(public, tuple(shares), PaillierPrivateKey(public.public_key, p, q))


@dataclass
class RunningTrustees:
    """In-process trustees (threads), each with its own MQTT client, stopped by stop()."""

    key: ThresholdKey
    path: Path  # the aggregator's trustees.json
    trustees: list[tuple[Trustee, threading.Thread]] = field(default_factory=list)

    def enroll_relays(self, relays: Mapping[str, Ed25519PublicKey]) -> None:
        for trustee, _ in self.trustees:
            trustee.enrolled = AllowListFile(trustee.config.allow_list_file,
                                             agents=EnrolledFleet(), relays=relays)

    def stop(self) -> None:
        for trustee, thread in self.trustees:
            trustee.stop()
            thread.join(5)
        self.trustees.clear()


def start_trustees(key: ThresholdKey, port: int, work: Path, *, fleet: str = "test",
                   relays: Mapping[str, Ed25519PublicKey] | None = None,
                   agents: Mapping[str, Ed25519PublicKey] | None = None) -> RunningTrustees:
    """Trustees trustee-1.. on ``port``, enrolling every test agent (EnrolledFleet) and
    ``relays``; returns them with the trustees.json an aggregator config names."""
    work.mkdir(parents=True, exist_ok=True)
    infos = {f"trustee-{s.index}": TrusteeInfo(s.index, signer_for(f"trustee-{s.index}")
                                               .public_key) for s in key.shares}
    roster = TrusteeSet(key.public, infos)
    running = RunningTrustees(key, work / "trustees.json")
    for share in key.shares:
        name = f"trustee-{share.index}"
        signer = signer_for(name)
        config = TrusteeConfig(
            trustee_id=name, share_file="", signing_key_file="",
            allow_list_file=str(work / f"{name}-allow.json"), state_dir=str(work / name),
            aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
            mqtt=MqttSettings(port=port), topics=Topics(fleet))
        trustee = Trustee(config, share=share, signer=signer,
                          allow_list=agents if agents is not None else EnrolledFleet(),
                          relays=relays or {}, roster=roster)
        thread = threading.Thread(target=trustee.run, daemon=True, name=name)
        thread.start()
        running.trustees.append((trustee, thread))
    running.path.write_text(json.dumps(roster.to_dict()))
    return running
