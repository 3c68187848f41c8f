from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import ModelSpec
from protocol.codec import CodecParams
from protocol.errors import ProtocolError
from protocol.messages import (
    MetricsMessage,
    PubKeyMessage,
    RoundMessage,
    StatusMessage,
    TrainingSettings,
)

SPEC = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)


def round_msg(**kw):
    base = dict(fleet="f", round_id=3, model_version=2, state="training", spec=SPEC,
                params=(0.1, -0.2, 0.3), deadline=1e9, settings=TrainingSettings(),
                key_fingerprint="k" * 64, codec_digest="d" * 32, issued_at=1.7e9)
    return RoundMessage(**{**base, **kw})


def test_round_message_round_trip_is_exact():
    msg = round_msg(params=(0.1, -1 / 3, 1e-300))
    assert RoundMessage.from_bytes(msg.to_bytes()) == msg


def test_pubkey_message_round_trip_and_digest_check(keypair):
    pub, _ = keypair
    msg = PubKeyMessage(fleet="f", n_hex=format(pub.n, "x"), fingerprint="0" * 64,
                        codec=CodecParams())
    assert PubKeyMessage.from_bytes(msg.to_bytes()) == msg
    doc = json.loads(msg.to_bytes())
    assert doc["layout"] == {"slot_bits": 44, "slots": 11}  # 511 usable bits / 44
    doc["codec"]["clip"] = 99.0  # a broker tampering with the contract
    with pytest.raises(ProtocolError, match="digest"):
        PubKeyMessage.from_bytes(json.dumps(doc).encode())


def test_pubkey_message_with_a_layout_that_does_not_follow_is_refused(keypair):
    pub, _ = keypair
    msg = PubKeyMessage(fleet="f", n_hex=format(pub.n, "x"), fingerprint="0" * 64,
                        codec=CodecParams())
    doc = json.loads(msg.to_bytes())
    doc["layout"]["slots"] = 12  # would make agents pack past the headroom
    with pytest.raises(ProtocolError, match="layout"):
        PubKeyMessage.from_bytes(json.dumps(doc).encode())


def test_status_and_metrics_round_trip():
    s = StatusMessage(agent_id="pi-1", state="offline", software="fedmq/0", codecs=("x",))
    assert StatusMessage.from_bytes(s.to_bytes()) == s
    m = MetricsMessage(fleet="f", round_id=1, model_version=1, expected=3, reported=2,
                       rejected=1, total_weight=10.0, seconds=0.5, update_norm=0.1,
                       closed_by="deadline")
    assert MetricsMessage.from_bytes(m.to_bytes()) == m


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"[]", b"null", b'{"schema": "fedmq.round/2"}',
    b'{"schema": "fedmq.status/1"}', b"{" * 100_000,
])
def test_malformed_payloads_raise_protocol_error(payload):
    with pytest.raises(ProtocolError):
        RoundMessage.from_bytes(payload)


@pytest.mark.parametrize("field,value", [
    ("round", "3"), ("round", True), ("params", [1, "x", 3]), ("params", [1.0]),
    ("state", "paused"), ("model", {"kind": "tree"}), ("settings", {"epochs": 0}),
])
def test_round_message_field_validation(field, value):
    doc = json.loads(round_msg().to_bytes())
    doc[field] = value
    with pytest.raises(ProtocolError):
        RoundMessage.from_bytes(json.dumps(doc).encode())


def test_non_finite_numbers_are_refused():
    doc = json.loads(round_msg().to_bytes())
    text = json.dumps(doc).replace('"deadline": 1000000000.0', '"deadline": NaN')
    with pytest.raises(ProtocolError):
        RoundMessage.from_bytes(text.encode())
    with pytest.raises(ProtocolError):
        round_msg(params=(0.1, float("inf"), 0.0))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["schema", "fleet", "round", "model_version", "state",
                                        "model", "params", "deadline", "settings", "agent",
                                        "key_fingerprint", "codec_digest", "issued_at", "n",
                                        "fingerprint", "codec", "codec_digest", "codecs"]),
                       json_values, max_size=12),
       st.sampled_from([RoundMessage, PubKeyMessage, StatusMessage]))
def test_random_json_documents_only_raise_protocol_error(doc, kind):
    doc = {**doc, "schema": kind.SCHEMA} if doc.get("schema") is None else doc
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        kind.from_bytes(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_round_messages_only_raise_protocol_error(data):
    payload = bytearray(round_msg().to_bytes())
    for _ in range(data.draw(st.integers(1, 5))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        RoundMessage.from_bytes(bytes(payload))
