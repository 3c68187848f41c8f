"""protocol.partial: the fedmq.partial/2 frame, its attestations, and version 1 refused."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from support import PARTIAL_DEVICES as DEVICES
from support import PARTIAL_KEYS as KEYS
from support import PARTIAL_RELAY as RELAY
from support import make_partial

from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.partial import PARTIAL, PREFIX, decode_partial, encode_partial


def unattested(p, pub, **kw):
    where = dict(fleet="f", run_id="r1", round_id=4, key_fingerprint=fingerprint(pub),
                 codec_digest="c" * 32, n_values=3)
    return p.unattested(KEYS, **{**where, **kw})


def test_round_trip_keeps_every_attestation(keypair):
    pub, _ = keypair
    msg = make_partial(pub)
    back = decode_partial(encode_partial(msg, pub, RELAY), pub)
    back.verify(RELAY.public_key)
    assert (back.contributors, back.attestations) == (msg.contributors, msg.attestations)
    assert unattested(back, pub) == []


def test_attestations_are_checked_against_the_receivers_round_and_keys(keypair):
    pub, _ = keypair
    msg = make_partial(pub)
    assert unattested(msg, pub, round_id=5) == ["d1", "d2"]  # the relay's next round
    assert unattested(msg, pub, codec_digest="e" * 32) == ["d1", "d2"]
    stolen = replace(msg, contributors=("d2", "d3"))  # d1's and d2's words under d2, d3
    assert unattested(stolen, pub) == ["d2", "d3"]
    foreign = make_partial(pub, signers={**DEVICES, "d2": RELAY})  # the relay signed for d2
    assert unattested(foreign, pub) == ["d2"]
    assert make_partial(pub, ("d1", "d9"), signers={**DEVICES, "d9": RELAY}).unattested(
        KEYS, fleet="f", run_id="r1", round_id=4, key_fingerprint=fingerprint(pub),
        codec_digest="c" * 32, n_values=3) == ["d9"]  # not enrolled at all


def test_one_attestation_per_contributor(keypair):
    pub, _ = keypair
    msg = make_partial(pub)
    with pytest.raises(ProtocolError, match="1 attestations for 2 contributors"):
        replace(msg, attestations=msg.attestations[:1])
    good = [a.to_json() for a in msg.attestations]
    for attestations, says in [(good[:1], "1 attestations for 2 contributors"),
                               ([good[0], ["zz", good[1][1]]], "attestation is not hex"),
                               ([good[0], good[1][1]], r"\[ciphertext hash hex, signature"),
                               (None, "'attestations' missing")]:  # a version 1 header
        fields = {"relay": "relay-a", "summed": 2, "contributors": ["d1", "d2"]}
        if attestations is not None:
            fields["attestations"] = attestations
        with pytest.raises(ProtocolError, match=says):
            decode_partial(PARTIAL.encode(msg, fields, pub, RELAY), pub)


def test_a_version_1_partial_is_refused_with_its_version(keypair):
    pub, _ = keypair
    payload = bytearray(encode_partial(make_partial(pub), pub, RELAY))
    payload[4] = 1
    with pytest.raises(ProtocolError, match=r"unsupported partial sum version 1 \(this is 2\)"):
        decode_partial(bytes(payload), pub)


def test_the_overhead_is_about_200_bytes_per_contributor(keypair):
    pub, _ = keypair

    def header_len(devices):
        return struct.unpack_from(">I", encode_partial(make_partial(pub, devices), pub, RELAY),
                                  PREFIX.size - 4)[0]
    per_contributor = header_len(("d1", "d2", "d3")) - header_len(("d1", "d2"))
    # '"d3",' in the contributors and '["<64 hex>","<128 hex>"],' in the attestations.
    assert per_contributor == 5 + 200
