"""Fuzzing every parser that reads broker payloads: only clean ProtocolErrors, never a crash.

Payloads per run (hypothesis examples): 800 random byte strings and 800 mutated
signed updates for ``decode_update``; 600 random JSON documents across the four
control messages; 400 mutated signed round messages and 400 mutated signed pubkey
messages. A mutation that still parses must fail signature verification unless it
left the signed content unchanged. Together with test_wire/test_messages (about
1,100 more), some 4,100 payloads per run.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import encrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import (
    MetricsMessage,
    PubKeyMessage,
    RoundMessage,
    StatusMessage,
    TrainingSettings,
)
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update

SIGNER = Signer.from_seed(b"fuzz")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def signed_update(keypair):
    pub, _ = keypair
    msg = UpdateMessage(fleet="f", run_id="r1", round_id=2, agent_id="pi-1",
                        key_fingerprint=fingerprint(pub), codec_digest="c" * 32, n_values=40,
                        ciphertexts=tuple(encrypt_ints(pub, [7, 8, 9, 10])))
    return encode_update(msg, pub, SIGNER)


def mutate(data: st.DataObject, payload: bytes, max_changes: int = 6) -> bytes:
    out = bytearray(payload)
    for _ in range(data.draw(st.integers(1, max_changes))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(out) - 1)))
        if action == "flip" and out:
            out[i] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del out[i:i + data.draw(st.integers(1, 64))]
        else:
            out[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


@settings(FUZZ, max_examples=800)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_decode_update(keypair, data):
    pub, _ = keypair
    with pytest.raises(ProtocolError):
        decode_update(data, pub)


@settings(FUZZ, max_examples=800)
@given(st.data())
def test_mutated_signed_updates_are_rejected_or_fail_the_signature(keypair, signed_update,
                                                                    data):
    pub, _ = keypair
    payload = mutate(data, signed_update)
    try:
        msg = decode_update(payload, pub)
    except ProtocolError:
        return
    if payload != signed_update:
        with pytest.raises(ProtocolError):
            msg.verify(SIGNER.public_key)


json_leaf = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
             | st.text(max_size=10))
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=25)
KEYS = ["schema", "fleet", "round", "run", "participants", "model_version", "state", "model",
        "params", "deadline", "settings", "agent", "key_fingerprint", "codec_digest",
        "issued_at", "n", "fingerprint", "codec", "codecs", "layout", "signing_key", "sig",
        "expected", "reported", "rejected", "total_weight", "seconds", "update_norm",
        "closed_by", "software"]


@settings(FUZZ, max_examples=600)
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=16),
       st.sampled_from([RoundMessage, PubKeyMessage, StatusMessage, MetricsMessage]))
def test_random_control_documents_only_raise_protocol_error(doc, kind):
    doc = {**doc, "schema": kind.SCHEMA} if doc.get("schema") is None else doc
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        if kind in (RoundMessage, MetricsMessage):
            kind.from_bytes(json.dumps(doc).encode(), verify_with=SIGNER.public_key)
        else:
            kind.from_bytes(json.dumps(doc).encode())


def _round_payload() -> bytes:
    spec = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)
    return RoundMessage(fleet="f", round_id=3, model_version=2, state="training", spec=spec,
                        params=(0.1, -0.2, 0.3), deadline=1e9, settings=TrainingSettings(),
                        key_fingerprint="k" * 64, codec_digest="d" * 32, run_id="r1",
                        participants=("pi-1",), issued_at=1.7e9).to_bytes(SIGNER)


ROUND = _round_payload()


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_mutated_signed_rounds_never_pass_as_another_round(data):
    payload = mutate(data, ROUND)
    with contextlib.suppress(ProtocolError):
        msg = RoundMessage.from_bytes(payload, verify_with=SIGNER.public_key)
        assert msg == RoundMessage.from_bytes(ROUND)  # only no-op mutations pass


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_mutated_signed_pubkeys_never_pass_as_another_key(keypair, data):
    pub, _ = keypair
    original = PubKeyMessage(fleet="f", n_hex=format(pub.n, "x"), fingerprint=fingerprint(pub),
                             codec=CodecParams(), signing_key=SIGNER.public_hex,
                             issued_at=1.7e9).to_bytes(SIGNER)
    payload = mutate(data, original)
    with contextlib.suppress(ProtocolError):
        msg = PubKeyMessage.from_bytes(payload)
        # A different, valid announcement needs the private key that signed it.
        assert msg == PubKeyMessage.from_bytes(original) or msg.signing_key != SIGNER.public_hex
