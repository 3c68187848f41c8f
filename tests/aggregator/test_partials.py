"""The top aggregator's side of relays: partial sums from enrolled relays, counted in devices.

Real Paillier (512 bits), the real codec and the real inbound path (aggregator.inbound).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from support import SPEC, EnrolledFleet, signer_for, training_sections

from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.culprits import Suspects
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.outcome import close_round
from fedmq.aggregator.rounds import Redelivered, Rejected, RoundState
from fedmq.protocol.attestation import Attestation, Statement, ciphertext_hash
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import (
    add_ciphertexts,
    ciphertexts_to_bytes,
    decrypt_ints,
    encrypt_ints,
    fingerprint,
)
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.layout import contract_digest, layout_for
from fedmq.protocol.partial import PartialSum, decode_partial, encode_partial
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update

RELAYS = {"relay-a": signer_for("relay-a").public_key, "relay-b": signer_for("relay-b").public_key}
PARAMS = CodecParams(max_agents=6, max_weight=1000)


@pytest.fixture
def state(keypair):
    pub, _ = keypair
    layout = layout_for("training", SPEC, PARAMS, StatsParams(), pub.n)
    return RoundState(
        fleet="test", run_id="run1", round_id=1, expected=frozenset({"relay-a", "relay-b", "d9"}),
        deadline=100.0, quorum=2, layout=layout, key_fingerprint=fingerprint(pub),
        codec_digest=contract_digest(PARAMS, StatsParams(), fingerprint(pub)),
        max_agents=PARAMS.max_agents, public_key=pub, allow_list=EnrolledFleet(),
        opened_at=0.0, relays=RELAYS)


N_PARAMS = SPEC.n_params


def vector(state, values):
    """A training update: every parameter delta values[0], weight values[1]."""
    ints = [values[0]] * N_PARAMS + [values[1]]
    return tuple(encrypt_ints(state.public_key, state.layout.encode(training_sections(ints))))


def decode_sum(state, priv, n):
    training, _ = state.layout.decode(decrypt_ints(priv, state.ciphertext_sum), n)
    return training[0], training[-1]


def close(state, priv):
    return close_round(state, priv, Suspects(), spec=SPEC, codec=PARAMS,
                       statistics=StatsParams())


def attestation(state, device, ciphertexts, *, round_id=1, signer: Signer | None = None):
    """``device``'s attestation of its update ``ciphertexts`` for ``round_id``."""
    digest = ciphertext_hash(ciphertexts_to_bytes(state.public_key, ciphertexts))
    statement = Statement("test", "run1", round_id, device, state.key_fingerprint,
                          state.codec_digest, state.n_values, digest)
    return Attestation(digest, statement.sign(signer or signer_for(device)))


def partial_payload(state, relay, devices, values=None, signer: Signer | None = None,
                    attest_round=1, attesters=None, **kw):
    """A relay's partial sum of ``devices`` (each sending ``values``, attesting it for
    ``attest_round``; ``attesters``: device -> whose key signed its attestation instead),
    as it goes on the wire."""
    total, attested = None, {}
    for device in devices:
        v = vector(state, values or (10, 20))
        by = signer_for((attesters or {}).get(device, device))
        attested[device] = attestation(state, device, v, round_id=attest_round, signer=by)
        total = list(v) if total is None else add_ciphertexts(state.public_key, total, v)
    contributors = tuple(sorted(devices))
    msg = PartialSum(fleet="test", run_id="run1", round_id=1, relay_id=relay,
                     key_fingerprint=state.key_fingerprint, codec_digest=state.codec_digest,
                     n_values=state.n_values, ciphertexts=tuple(int(c) for c in total or ()),
                     contributors=contributors,
                     attestations=tuple(attested[d] for d in contributors))
    return encode_partial(replace(msg, **kw), state.public_key, signer or signer_for(relay))


def direct(state, agent, values=(10, 20)):
    msg = UpdateMessage(fleet="test", run_id="run1", round_id=1, agent_id=agent,
                        key_fingerprint=state.key_fingerprint, codec_digest=state.codec_digest,
                        n_values=state.n_values, ciphertexts=vector(state, values))
    return decode_update(encode_update(msg, state.public_key, signer_for(agent)),
                         state.public_key)


def test_a_partial_counts_all_its_devices_and_decodes_with_their_number(state, keypair):
    _, priv = keypair
    state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d1", "d2", "d3"]),
                                       state.public_key), "relay-a")
    state.offer(direct(state, "d9", (1, 5)), "d9")
    assert sorted(state.accepted) == ["d1", "d2", "d3", "d9"]
    assert state.missing == {"relay-b"}  # the relay reported; its devices are not "expected"
    assert decode_sum(state, priv, 4) == (31, 65)
    closing = close(state, priv)
    assert closing.kept == ("d1", "d2", "d3", "d9")  # devices, not the relay


def test_the_bounds_count_devices_not_members(state, keypair):
    # Weight 700 per device fits max_weight (1000) per device but not per member:
    # decoding the relay's sum as ONE update would call this overflow.
    _, priv = keypair
    state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d1", "d2"],
                                                       values=(1, 700)), state.public_key),
                        "relay-a")
    closing = close(state, priv)
    assert closing.kept == ("d1", "d2") and closing.total_weight > 0


@pytest.mark.parametrize("forge,reason", [
    ({"signer": signer_for("relay-b")}, "forged or tampered partial sum"),
    ({"relay": "relay-z"}, "not an enrolled relay"),
    ({"relay": "d9"}, "not an enrolled relay"),  # an enrolled AGENT is no relay
    ({"devices": ["d1", "d2", "d3", "d4", "d5", "d6", "d7"]}, "exceed max_agents=6"),
])
def test_forged_partials_are_rejected_with_their_reason(state, forge, reason):
    relay = forge.get("relay", "relay-a")
    payload = partial_payload(state, relay, forge.get("devices", ["d1"]),
                              signer=forge.get("signer"))
    with pytest.raises(Rejected, match=reason):
        state.offer_partial(decode_partial(payload, state.public_key), relay)
    assert state.accepted == [] and state.ciphertext_sum is None and state.rejected == 1


def test_a_device_is_never_counted_twice(state):
    pub = state.public_key
    state.offer(direct(state, "d1"), "d1")
    with pytest.raises(Rejected, match=r"already counted: d1 \(via d1\)"):
        state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d1", "d2"]), pub),
                            "relay-a")
    state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d2", "d3"]), pub),
                        "relay-a")
    with pytest.raises(Rejected, match=r"d3 \(via relay-a\)"):  # a second relay claims it
        state.offer_partial(decode_partial(partial_payload(state, "relay-b", ["d3"]), pub),
                            "relay-b")
    with pytest.raises(Rejected, match="already counted in relay 'relay-a'"):
        state.offer(direct(state, "d2"), "d2")
    assert sorted(state.accepted) == ["d1", "d2", "d3"]


def test_a_redelivered_partial_is_counted_once(state):
    payload = partial_payload(state, "relay-a", ["d1", "d2"])
    state.offer_partial(decode_partial(payload, state.public_key), "relay-a")
    with pytest.raises(Redelivered):
        state.offer_partial(decode_partial(payload, state.public_key), "relay-a")
    with pytest.raises(Rejected, match="second, different partial sum"):
        state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d4"]),
                                           state.public_key), "relay-a")


def test_a_partial_that_cannot_be_persisted_is_rejected_not_half_kept(state):
    def fail(_p):
        raise OSError("disk full")
    payload = partial_payload(state, "relay-a", ["d1", "d2"])
    with pytest.raises(Rejected, match="cannot persist the partial sum: disk full"):
        state.offer_partial(decode_partial(payload, state.public_key), "relay-a", commit=fail)
    assert (state.accepted, state.members, state.ciphertext_sum, state.rejected) == (
        [], {}, None, 1)
    state.offer_partial(decode_partial(payload, state.public_key), "relay-a")  # not "a second"
    assert sorted(state.accepted) == ["d1", "d2"]


def test_a_tampered_contributor_list_breaks_the_signature(state):
    payload = partial_payload(state, "relay-a", ["d1", "d2"])
    forged = payload.replace(b'"d2"', b'"d8"')
    with pytest.raises(Rejected, match="forged or tampered"):
        state.offer_partial(decode_partial(forged, state.public_key), "relay-a")


def test_malformed_partials_fail_to_decode(state):
    payload = partial_payload(state, "relay-a", ["d1", "d2"])
    with pytest.raises(ProtocolError, match="summed"):
        decode_partial(payload.replace(b'"summed":2', b'"summed":3'), state.public_key)
    with pytest.raises(ProtocolError, match="sorted and unique"):
        decode_partial(payload.replace(b'["d1","d2"]', b'["d2","d1"]'), state.public_key)


def test_the_inbound_path_logs_why_a_partial_is_rejected(state, tmp_path, caplog):
    inbound = Inbound(Topics("test"), state.public_key, Checkpoints(tmp_path))
    topic = Topics("test").update
    caplog.set_level(logging.WARNING, "fedmq.aggregator.service")
    inbound.handle(state, topic("relay-z"), partial_payload(state, "relay-z", ["d1"]))
    inbound.handle(state, topic("relay-a"),
                   partial_payload(state, "relay-a", ["d1"], signer=signer_for("relay-b")))
    inbound.handle(state, topic("relay-a"), partial_payload(state, "relay-a", ["d1", "d2"]))
    inbound.handle(state, topic("relay-b"), partial_payload(state, "relay-b", ["d2", "d3"]))
    lines = [r.getMessage() for r in caplog.records]
    assert any("relay-z" in line and "not an enrolled relay" in line for line in lines)
    assert any("forged or tampered partial sum" in line for line in lines)
    assert any("already counted: d2 (via relay-a)" in line for line in lines)
    # Held for its batch's commit (aggregator.commit): judged, not counted yet.
    assert state.accepted == [] and state.held == 2 and state.rejected == 3
    inbound.flush(state)
    assert sorted(state.accepted) == ["d1", "d2"] and state.rejected == 3
    # The accepted partial was persisted like an update, for a resumed round.
    assert Checkpoints(tmp_path).load_updates() == [("relay-a", state.payloads["relay-a"])]


def test_a_stale_partial_under_stolen_ids_is_refused_and_blocks_no_victim(state, tmp_path,
                                                                          caplog):
    # relay-a re-sends its devices' sum, attested by d1..d3, under d1 and the ids of
    # relay-b's device d7 and the direct device d9: whoever reports first must not win.
    pub, inbound = state.public_key, Inbound(Topics("test"), state.public_key,
                                             Checkpoints(tmp_path))
    stolen = partial_payload(state, "relay-a", ["d1", "d7", "d9"], attest_round=0,
                             attesters={"d7": "d2", "d9": "d3"})
    caplog.set_level(logging.WARNING, "fedmq.aggregator.service")
    inbound.handle(state, Topics("test").update("relay-a"), stolen)
    assert "lists device(s) d1, d7, d9 without their valid attestation of round 1" in \
        caplog.text and "refused whole" in caplog.text
    assert (state.accepted, state.ciphertext_sum, state.rejected) == ([], None, 1)
    state.offer(direct(state, "d9"), "d9")  # the victims' genuine updates count
    state.offer_partial(decode_partial(partial_payload(state, "relay-b", ["d7", "d8"]), pub),
                        "relay-b")
    state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d1", "d2"]), pub),
                        "relay-a")  # and the relay's own genuine partial after all
    assert sorted(state.accepted) == ["d1", "d2", "d7", "d8", "d9"]


@pytest.mark.parametrize("attest_round,attesters,names", [
    (0, {}, "d1, d2"),  # the previous round's attestations, relabelled for this one
    (1, {"d2": "relay-a"}, "d2"),  # the relay signed for its device
    (1, {"d2": "d1"}, "d2"),  # another device's key
])
def test_a_partial_without_this_rounds_device_attestations_is_refused(state, attest_round,
                                                                      attesters, names):
    payload = partial_payload(state, "relay-a", ["d1", "d2"], attest_round=attest_round,
                              attesters=attesters)
    with pytest.raises(Rejected, match=f"device.s. {names} without their valid attestation"):
        state.offer_partial(decode_partial(payload, state.public_key), "relay-a")
    assert state.accepted == [] and state.rejected == 1


def test_an_unenrolled_contributor_is_refused(state):
    payload = partial_payload(state, "relay-a", ["d1", "unenrolled-x"])
    with pytest.raises(Rejected, match=r"device\(s\) unenrolled-x without"):
        state.offer_partial(decode_partial(payload, state.public_key), "relay-a")


def test_relays_list_only_their_assigned_devices(state):
    pub = state.public_key
    state.relay_devices = {"relay-a": frozenset({"d1", "d2"})}
    with pytest.raises(Rejected, match=r"relay .relay-a. lists device\(s\) outside its "
                                       "assignment: d3; refused whole"):
        state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d1", "d3"]),
                                           pub), "relay-a")
    # relay-b has no assignment: any device, but not one assigned to relay-a.
    with pytest.raises(Rejected, match="assigned to another relay: d2"):
        state.offer_partial(decode_partial(partial_payload(state, "relay-b", ["d2", "d5"]),
                                           pub), "relay-b")
    state.offer_partial(decode_partial(partial_payload(state, "relay-b", ["d3", "d5"]), pub),
                        "relay-b")
    state.offer_partial(decode_partial(partial_payload(state, "relay-a", ["d1"]), pub),
                        "relay-a")
    state.offer(direct(state, "d2"), "d2")  # an assigned device may still report directly
    assert sorted(state.accepted) == ["d1", "d2", "d3", "d5"]
