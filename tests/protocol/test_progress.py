"""The open round's progress message: exact round trip, signature, bounds."""

from __future__ import annotations

import json

import pytest

from fedmq.protocol.crypto.signing import Signer, sign_document
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.progress import ProgressMessage

SIGNER = Signer.from_seed(b"progress-test")


def progress(**kw):
    base = dict(fleet="f", run_id="run1", round_id=3, phase="training", rounds=10,
                model_version=2, opened_at=1.7e9, deadline=1.7e9 + 20,
                expected=("a", "b", "c"), reported=("a",), skipped={"c": "too-few-rows"},
                rejected={"not-enrolled": 2}, relays={"relay-1": ("d", "e")}, enrolled=5,
                online=4, update_bytes=1234, issued_at=1.7e9 + 1)
    return ProgressMessage(**{**base, **kw})


def test_round_trip_is_exact_and_signed():
    m = progress()
    assert ProgressMessage.from_bytes(m.to_bytes(SIGNER), verify_with=SIGNER.public_key) == m


def test_another_key_is_refused():
    payload = progress().to_bytes(Signer.from_seed(b"someone else"))
    with pytest.raises(ProtocolError):
        ProgressMessage.from_bytes(payload, verify_with=SIGNER.public_key)


def _resigned(**changes):
    doc = json.loads(progress().to_bytes(SIGNER))
    doc.pop("sig")
    doc.update(changes)
    return sign_document(doc, SIGNER)


@pytest.mark.parametrize("changes", [
    {"phase": "finished"}, {"round": -1}, {"round": True}, {"expected": "a"},
    {"expected": ["a/b"]}, {"reported": [1]}, {"skipped": {"a": 3}},
    {"rejected": {"x": -1}}, {"rejected": {str(i): 1 for i in range(65)}},
    {"relays": {"r": "a"}}, {"relays": {"r/x": ["a"]}}, {"deadline": "soon"},
    {"fleet": 3}, {"run": "a b"},
])
def test_malformed_fields_are_refused(changes):
    with pytest.raises(ProtocolError):
        ProgressMessage.from_bytes(_resigned(**changes), verify_with=SIGNER.public_key)
