from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.signing import Signer, sign_document
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import (
    MetricsMessage,
    PubKeyMessage,
    RoundMessage,
    StatusMessage,
    TrainingSettings,
)
from fedmq.protocol.sums.statistics import StatsParams

SPEC = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)
SIGNER = Signer.from_seed(b"messages-test")


def round_msg(**kw):
    base = dict(fleet="f", round_id=3, model_version=2, state="training", spec=SPEC,
                params=(0.1, -0.2, 0.3), deadline=1e9, settings=TrainingSettings(),
                key_fingerprint="k" * 64, codec_digest="d" * 32, run_id="run1",
                issued_at=1.7e9)
    return RoundMessage(**{**base, **kw})


def pubkey_msg(pub):
    return PubKeyMessage(fleet="f", n_hex=format(pub.n, "x"), fingerprint="0" * 64,
                         codec=CodecParams(), signing_key=SIGNER.public_hex)


def test_round_message_round_trip_is_exact_and_signed():
    msg = round_msg(params=(0.1, -1 / 3, 1e-300), participants=("pi-1", "pi-2"))
    payload = msg.to_bytes(SIGNER)
    assert RoundMessage.from_bytes(payload, verify_with=SIGNER.public_key) == msg
    assert msg.selects("pi-1") and not msg.selects("pi-3") and round_msg().selects("any")
    with pytest.raises(ProtocolError, match="bad signature"):
        RoundMessage.from_bytes(payload, verify_with=Signer.generate().public_key)


@pytest.mark.parametrize("field,value", [
    ("params", [9.0, 9.0, 9.0]), ("round", 4), ("run", "run2"), ("participants", ["evil"]),
    ("state", "finished"),
])
def test_any_change_to_a_signed_round_breaks_the_signature(field, value):
    doc = json.loads(round_msg().to_bytes(SIGNER))
    doc[field] = value
    with pytest.raises(ProtocolError, match="bad signature"):
        RoundMessage.from_bytes(json.dumps(doc).encode(), verify_with=SIGNER.public_key)


def test_unsigned_round_is_refused_when_a_key_is_pinned():
    doc = json.loads(round_msg().to_bytes(SIGNER))
    del doc["sig"]
    with pytest.raises(ProtocolError, match="not signed"):
        RoundMessage.from_bytes(json.dumps(doc).encode(), verify_with=SIGNER.public_key)


def test_pubkey_message_round_trip_is_self_signed(keypair):
    pub, _ = keypair
    msg = pubkey_msg(pub)
    assert PubKeyMessage.from_bytes(msg.to_bytes(SIGNER)) == msg
    doc = json.loads(msg.to_bytes(SIGNER))
    # 511 usable bits / 44 for deltas; sums of squares of data need 119-bit slots.
    assert doc["layout"] == {"training": {"slot_bits": 44, "slots": 11},
                             "statistics": {"slot_bits": 119, "slots": 4}}
    assert doc["statistics"] == StatsParams().to_dict()
    doc["codec"]["clip"] = 99.0  # a broker tampering with the contract
    with pytest.raises(ProtocolError, match="bad signature"):
        PubKeyMessage.from_bytes(json.dumps(doc).encode())
    with pytest.raises(ProtocolError, match="signed by the key it announces"):
        msg.to_bytes(Signer.generate())


def test_pubkey_message_checks_digest_and_layout_before_trusting_them(keypair):
    pub, _ = keypair
    signer = Signer.generate()
    msg = PubKeyMessage(fleet="f", n_hex=format(pub.n, "x"), fingerprint="0" * 64,
                        codec=CodecParams(), signing_key=signer.public_hex)
    doc = json.loads(msg.to_bytes(signer))
    doc["layout"]["slots"] = 12  # would make agents pack past the headroom
    with pytest.raises(ProtocolError, match="layout"):
        PubKeyMessage.from_bytes(sign_document(doc, signer))
    doc = json.loads(msg.to_bytes(signer))
    doc["codec_digest"] = "0" * 32
    with pytest.raises(ProtocolError, match="digest"):
        PubKeyMessage.from_bytes(sign_document(doc, signer))


def test_status_and_metrics_round_trip():
    s = StatusMessage(agent_id="pi-1", state="offline", software="fedmq/0", codecs=("x",))
    assert StatusMessage.from_bytes(s.to_bytes()) == s
    m = MetricsMessage(fleet="f", round_id=1, model_version=1, expected=3, reported=2,
                       rejected=1, total_weight=10.0, seconds=0.5, update_norm=0.1,
                       closed_by="deadline")
    assert MetricsMessage.from_bytes(m.to_bytes(SIGNER), verify_with=SIGNER.public_key) == m


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"[]", b"null", b'{"schema": "fedmq.round/1"}',
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
    doc = json.loads(round_msg().to_bytes(SIGNER))
    doc[field] = value
    with pytest.raises(ProtocolError):
        RoundMessage.from_bytes(json.dumps(doc).encode())


def test_non_finite_numbers_are_refused():
    doc = json.loads(round_msg().to_bytes(SIGNER))
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
                                        "fingerprint", "codec", "codec_digest", "codecs",
                                        "run", "participants", "signing_key", "sig",
                                        "layout"]),
                       json_values, max_size=12),
       st.sampled_from([RoundMessage, PubKeyMessage, StatusMessage]))
def test_random_json_documents_only_raise_protocol_error(doc, kind):
    doc = {**doc, "schema": kind.SCHEMA} if doc.get("schema") is None else doc
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        kind.from_bytes(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_round_messages_only_raise_protocol_error(data):
    original = round_msg().to_bytes(SIGNER)
    payload = bytearray(original)
    for _ in range(data.draw(st.integers(1, 5))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        msg = RoundMessage.from_bytes(bytes(payload), verify_with=SIGNER.public_key)
        # Only mutations that change nothing the signature covers may pass.
        assert msg == RoundMessage.from_bytes(original)


def test_non_iid_settings_go_on_the_wire_only_when_set_and_old_settings_still_parse():
    plain = TrainingSettings()
    assert set(plain.to_dict()) == {"epochs", "batch_size", "learning_rate", "l2"}
    assert TrainingSettings.from_dict(plain.to_dict()) == plain
    custom = TrainingSettings(prox_mu=0.01, augment="oversample+jitter", jitter=0.1,
                              distill_weight=0.5, distill_temperature=2.0)
    doc = custom.to_dict()
    assert doc["prox_mu"] == 0.01 and doc["augment"] == "oversample+jitter"
    assert TrainingSettings.from_dict(json.loads(json.dumps(doc))) == custom
    assert custom.distills and not plain.distills
    assert set(TrainingSettings(prox_mu=0.1).to_dict()) == {
        "epochs", "batch_size", "learning_rate", "l2", "prox_mu"}
    for bad in ({"prox_mu": -1.0}, {"prox_mu": float("nan")}, {"augment": "mixup"},
                {"jitter": 1.5}, {"distill_weight": -0.1}, {"distill_temperature": 0.0}):
        with pytest.raises(ProtocolError):
            TrainingSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        TrainingSettings.from_dict({**plain.to_dict(), "augment": 3})
    with pytest.raises(ProtocolError):
        TrainingSettings.from_dict({**plain.to_dict(), "prox_mu": "big"})


def test_a_round_signs_its_teacher_and_rounds_without_one_stay_as_they_were():
    spec = ModelSpec(kind="logistic", features=("a", "b"), n_classes=3)
    params = tuple(0.1 * i for i in range(spec.n_params))
    taught = round_msg(spec=spec, params=params, teacher=tuple(float(i) for i in range(9)),
                       settings=TrainingSettings(distill_weight=0.5))
    payload = taught.to_bytes(SIGNER)
    assert RoundMessage.from_bytes(payload, verify_with=SIGNER.public_key) == taught
    doc = json.loads(payload)
    doc["teacher"][0] = 5.0
    with pytest.raises(ProtocolError, match="bad signature"):
        RoundMessage.from_bytes(json.dumps(doc).encode(), verify_with=SIGNER.public_key)
    assert "teacher" not in json.loads(round_msg().to_bytes(SIGNER))
    assert RoundMessage.from_bytes(round_msg().to_bytes(SIGNER)).teacher == ()
    with pytest.raises(ProtocolError, match="n_classes"):
        round_msg(spec=spec, params=params, teacher=(1.0, 2.0))
    with pytest.raises(ProtocolError, match="finite"):
        round_msg(spec=spec, params=params, teacher=(float("inf"),) * 9)
    with pytest.raises(ProtocolError, match="n_classes"):
        round_msg(teacher=(0.0,) * 4, spec=ModelSpec(kind="linear", features=("a", "b")))
