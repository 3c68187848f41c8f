"""The DP terms are part of the announced contract: a device that ignores them is refused."""

from __future__ import annotations

import pytest
from support import AGGREGATOR_SIGNER, SPEC

from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.errors import CodecError, ProtocolError
from fedmq.protocol.layout import DpCodec, contract_digest, layout_for
from fedmq.protocol.messages import PubKeyMessage
from fedmq.protocol.privacy.noise import DpParams
from fedmq.protocol.privacy.terms import PrivacyTerms, SampleDpParams
from fedmq.protocol.sums.statistics import StatsParams

DEVICE = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=4.7, clip=1.0, quorum=5)
SAMPLE = SampleDpParams(epsilon=8.0, delta=1e-5, clip=1.0, rounds=10)
N = (1 << 1023) + 1155  # an odd 1024-bit modulus: the layout only needs its size


def test_terms_round_trip_and_change_the_contract_digest() -> None:
    both = PrivacyTerms(device=DEVICE, sample=SAMPLE)
    assert PrivacyTerms.from_dict(both.to_dict()) == both
    assert PrivacyTerms.from_dict(None) == PrivacyTerms()
    plain = contract_digest(CodecParams(), StatsParams(), "ab" * 32)
    # A fleet without DP keeps the digest it had before DP existed ...
    assert contract_digest(CodecParams(), StatsParams(), "ab" * 32, PrivacyTerms()) == plain
    # ... and every change of the terms is another contract.
    digests = {contract_digest(CodecParams(), StatsParams(), "ab" * 32, t) for t in (
        both, PrivacyTerms(device=DEVICE), PrivacyTerms(sample=SAMPLE),
        PrivacyTerms(device=DEVICE, exact_aggregates=True))}
    assert len(digests) == 4 and plain not in digests


@pytest.mark.parametrize("doc", [
    "x", {"device": None}, {"exact_aggregates": "yes"},
    {"exact_aggregates": False, "sample": {"epsilon": 1.0}},
    {"exact_aggregates": False, "sample": {"epsilon": -1.0, "delta": 1e-5, "clip": 1.0,
                                           "rounds": 3}},
])
def test_malformed_terms_are_a_protocol_error(doc: object) -> None:
    with pytest.raises(ProtocolError):
        PrivacyTerms.from_dict(doc)


def test_the_pubkey_message_carries_the_terms_under_its_signature() -> None:
    terms = PrivacyTerms(device=DEVICE, sample=SAMPLE)
    msg = PubKeyMessage(fleet="f", n_hex=format(N, "x"), fingerprint="0" * 64,
                        codec=CodecParams(), signing_key=AGGREGATOR_SIGNER.public_hex,
                        privacy=terms)
    payload = msg.to_bytes(AGGREGATOR_SIGNER)
    back = PubKeyMessage.from_bytes(payload)
    assert back.privacy == terms and back.contract_digest == msg.contract_digest
    tampered = payload.replace(b'"noise_multiplier":4.7', b'"noise_multiplier":0.1')
    assert tampered != payload
    with pytest.raises(ProtocolError):
        PubKeyMessage.from_bytes(tampered)


def test_under_dp_an_update_is_one_unweighted_training_section() -> None:
    device = layout_for("training", SPEC, CodecParams(), StatsParams(), N,
                        PrivacyTerms(device=DEVICE))
    [section] = device.sections
    assert isinstance(section.codec, DpCodec) and section.max_count == 1
    sample = layout_for("training", SPEC, CodecParams(), StatsParams(), N,
                        PrivacyTerms(sample=SAMPLE))
    assert [s.name for s in sample.sections] == ["training"]
    assert sample.sections[0].max_count == 1  # weight 1: each device counts once
    exact = layout_for("training", SPEC, CodecParams(), StatsParams(), N,
                       PrivacyTerms(device=DEVICE, exact_aggregates=True))
    assert [s.name for s in exact.sections] == ["training", "evaluation"]
    # A weight above 1 does not fit a DP section: the device cannot weight by its rows.
    with pytest.raises(CodecError, match="count 2"):
        sample.encode([[0] * SPEC.n_params + [2]])


def test_colluding_devices_are_part_of_the_signed_terms_and_the_digest() -> None:
    from dataclasses import replace

    def digest(device: DpParams) -> str:
        return contract_digest(CodecParams(), StatsParams(), "ab" * 32,
                               PrivacyTerms(device=device))

    # c = 0 keeps the digest of terms written before the field existed (no key in them).
    assert "colluding_devices" not in PrivacyTerms(device=DEVICE).to_dict()["device"]
    assert digest(replace(DEVICE, colluding_devices=0)) == digest(DEVICE)
    digests = {digest(replace(DEVICE, colluding_devices=c)) for c in range(DEVICE.quorum)}
    assert len(digests) == DEVICE.quorum  # every c is another contract
    terms = PrivacyTerms(device=replace(DEVICE, colluding_devices=2))
    assert "2 of them possibly colluding" in terms.describe()
    msg = PubKeyMessage(fleet="f", n_hex=format(N, "x"), fingerprint="0" * 64,
                        codec=CodecParams(), signing_key=AGGREGATOR_SIGNER.public_hex,
                        privacy=terms)
    payload = msg.to_bytes(AGGREGATOR_SIGNER)
    back = PubKeyMessage.from_bytes(payload)
    assert back.privacy == terms and back.contract_digest == msg.contract_digest
    tampered = payload.replace(b'"colluding_devices":2', b'"colluding_devices":0')
    assert tampered != payload
    with pytest.raises(ProtocolError):
        PubKeyMessage.from_bytes(tampered)
