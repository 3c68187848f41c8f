"""aggregator.trustees: ask every group at once, check each partial, combine T; name the silent."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import AGGREGATOR_SIGNER, EnrolledFleet, signer_for
from trustee_support import ThresholdKey

from fedmq.aggregator.trustees import TrusteeInfo, TrusteePanel, TrusteeSet
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import add_ciphertexts, encrypt_ints, fingerprint
from fedmq.protocol.errors import ConfigError, DecryptionUnavailable
from fedmq.protocol.messages import PubKeyMessage
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update
from fedmq.runtime.transport import MqttSettings
from fedmq.trustee.config import TrusteeConfig
from fedmq.trustee.service import Trustee

TOPICS = Topics("test")
DEVICES = [f"agent-{i}" for i in range(6)]


class Wire:
    """Trustees answering in this process: a request published is answered at once,
    unless the trustee is silenced."""

    def __init__(self, key: ThresholdKey, tmp: Path) -> None:
        self.trustees: list[Trustee] = []
        roster = TrusteeSet(key.public, {
            f"trustee-{s.index}": TrusteeInfo(s.index, signer_for(f"trustee-{s.index}")
                                              .public_key) for s in key.shares})
        self.silent: set[str] = set()
        self.requests = 0
        self.panel: TrusteePanel | None = None
        for share in key.shares:
            name = f"trustee-{share.index}"
            config = TrusteeConfig(
                trustee_id=name, share_file="", signing_key_file="", allow_list_file="",
                state_dir=str(tmp / name), aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
                mqtt=MqttSettings(), topics=TOPICS)
            trustee = Trustee(config, share=share, signer=signer_for(name),
                              allow_list=EnrolledFleet(), relays={}, roster=roster)
            trustee._publish = self._reply_from(name)  # type: ignore[method-assign]
            self.trustees.append(trustee)

    def _reply_from(self, name: str) -> Any:
        def publish(payload: bytes) -> None:
            assert self.panel is not None
            self.panel.deliver(TOPICS.trustee_reply(name), payload)
        return publish

    def publish(self, topic: str, payload: bytes) -> None:
        self.requests += 1
        for trustee in self.trustees:
            if trustee.config.trustee_id not in self.silent:
                trustee.handle(topic, payload)


@pytest.fixture
def fleet(threshold_key: ThresholdKey, tmp_path: Path) -> Any:
    public = threshold_key.public.public_key
    wire = Wire(threshold_key, tmp_path)
    announcement = PubKeyMessage(fleet="test", n_hex=format(public.n, "x"),
                                 fingerprint=fingerprint(public), codec=CodecParams(),
                                 signing_key=AGGREGATOR_SIGNER.public_hex)
    vectors, hashes = {}, {}
    for trustee in wire.trustees:
        trustee.handle(TOPICS.pubkey, announcement.to_bytes(AGGREGATOR_SIGNER))
    for i, device in enumerate(DEVICES):
        msg = UpdateMessage(fleet="test", run_id="run1", round_id=1, agent_id=device,
                            key_fingerprint=fingerprint(public),
                            codec_digest=announcement.contract_digest, n_values=2,
                            ciphertexts=tuple(encrypt_ints(public, [i, 10 * i])))
        payload = encode_update(msg, public, signer_for(device))
        for trustee in wire.trustees:
            trustee.handle(TOPICS.update(device), payload)
        vectors[device] = msg.ciphertexts
        hashes[device] = decode_update(payload, public).signed_hash
    state = SimpleNamespace(fleet="test", run_id="run1", round_id=1, payloads={},
                            hashes=hashes, members={d: (d,) for d in DEVICES})
    infos = {f"trustee-{s.index}": TrusteeInfo(s.index, signer_for(f"trustee-{s.index}")
                                               .public_key) for s in threshold_key.shares}
    panel = TrusteePanel(TrusteeSet(threshold_key.public, infos), TOPICS, wire.publish,
                         timeout=0.3, attempts=0)
    wire.panel = panel
    return SimpleNamespace(panel=panel, wire=wire, state=state, vectors=vectors,
                           public=public)


def product(fleet: Any, group: frozenset[str]) -> list[int]:
    members = sorted(group)
    total = list(fleet.vectors[members[0]])
    for m in members[1:]:
        total = add_ciphertexts(fleet.public, total, fleet.vectors[m])
    return total


def test_each_group_is_the_next_entry_of_the_rounds_certified_log(fleet: Any) -> None:
    groups = [frozenset(DEVICES[:2]), frozenset(DEVICES[2:4]), frozenset(DEVICES[4:])]
    for group in groups:
        rows = sorted(int(d.split("-")[1]) for d in group)
        assert fleet.panel.decrypt(fleet.state, group, product(fleet, group)) == [
            sum(rows), 10 * sum(rows)]
    assert fleet.wire.requests == 6  # a vote and a decryption per group, nothing twice
    entries = fleet.panel.logs["run1/1"]
    assert [set(e.devices) for e in entries] == [set(g) for g in groups]
    assert all(len(e.votes) >= 2 for e in entries)  # T votes certify each entry


def test_a_restarted_aggregator_catches_up_with_the_trustees_log(fleet: Any) -> None:
    first = frozenset(DEVICES[:3])
    fleet.panel.decrypt(fleet.state, first, product(fleet, first))
    fleet.panel.logs.clear()  # a new process: it knows no log; the trustees send theirs
    second = frozenset(DEVICES[3:])
    rows = sum(int(d.split("-")[1]) for d in second)
    assert fleet.panel.decrypt(fleet.state, second, product(fleet, second)) == [rows, 10 * rows]
    assert len(fleet.panel.logs["run1/1"]) == 2
    # A set that would combine with the first into one device is refused by the log.
    third = frozenset(DEVICES[:2])
    with pytest.raises(DecryptionUnavailable, match="refused"):
        fleet.panel.decrypt(fleet.state, third, product(fleet, third))


def test_fewer_than_t_answering_names_the_silent_trustees(fleet: Any) -> None:
    fleet.wire.silent = {"trustee-1", "trustee-2"}
    group = frozenset(DEVICES)
    with pytest.raises(DecryptionUnavailable, match="got 1; silent: trustee-1, trustee-2"):
        fleet.panel.decrypt(fleet.state, group, product(fleet, group))


def test_a_refusal_by_enough_trustees_ends_at_once(fleet: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    group = frozenset(DEVICES[:1])  # one device: every trustee refuses
    with pytest.raises(DecryptionUnavailable, match="refused by trustee-1, trustee-2"):
        fleet.panel.decrypt(fleet.state, group, product(fleet, group))
    assert "fewer than min_group = 2" in caplog.text


def test_a_broken_trustees_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "trustees.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"cannot read trustees file .*: not a JSON file"):
        TrusteeSet.load(path)
    path.write_text(json.dumps({"schema": "fedmq.trustees/1", "key": {}}))
    with pytest.raises(ConfigError, match=r"trustees file .*: "):
        TrusteeSet.load(path)


def test_a_minority_threshold_or_a_trustee_without_key_is_refused(
        threshold_key: ThresholdKey, tmp_path: Path) -> None:
    infos = {f"trustee-{s.index}": TrusteeInfo(s.index, signer_for(f"t{s.index}").public_key)
             for s in threshold_key.shares}
    doc = TrusteeSet(threshold_key.public, infos).to_dict()
    path = tmp_path / "trustees.json"
    del doc["trustees"]["trustee-2"]["signing_key"]  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="a trustee lacks 'signing_key'"):
        TrusteeSet.load(path)
    doc = TrusteeSet(threshold_key.public, infos).to_dict()
    doc["key"]["threshold"] = 1  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="must be a majority"):
        TrusteeSet.load(path)


def test_a_split_vote_never_blocks_the_log(fleet: Any) -> None:
    """Each trustee alone once votes for another set at entry 0 (the others away, every
    time a retry with a new set): a vote releases nothing, so once two answer the next
    set is certified at entry 0 and decrypted."""
    names = ["trustee-1", "trustee-2", "trustee-3"]
    for alone, group in zip(names, (DEVICES[:2], DEVICES[2:4], DEVICES[4:]), strict=True):
        fleet.wire.silent = set(names) - {alone}
        with pytest.raises(DecryptionUnavailable, match="got 1"):
            fleet.panel.decrypt(fleet.state, frozenset(group), product(fleet, frozenset(group)))
    fleet.wire.silent = set()
    group = frozenset(DEVICES)
    assert fleet.panel.decrypt(fleet.state, group, product(fleet, group)) == [15, 150]
    assert [set(e.devices) for e in fleet.panel.logs["run1/1"]] == [set(DEVICES)]
