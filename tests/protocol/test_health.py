"""Skip reasons in an agent's retained status: round trip, old statuses, rejected input."""

from __future__ import annotations

import json

import pytest

from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.health import MAX_DETAIL, SKIP_CODES, Skip
from fedmq.protocol.messages import StatusMessage


def _status(**kw: object) -> StatusMessage:
    return StatusMessage(agent_id="pi-1", state="online", software="fedmq/0", codecs=("x",),
                         **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", SKIP_CODES)
def test_skip_round_trips_in_the_status(code):
    skip = Skip(run_id="run-1", round_id=3, code=code, detail="labels must lie in [0, 3), got 5")
    status = _status(skipped=skip)
    payload = status.to_bytes()
    assert json.loads(payload)["skipped"] == {"run_id": "run-1", "round_id": 3, "code": code,
                                              "detail": "labels must lie in [0, 3), got 5"}
    assert StatusMessage.from_bytes(payload) == status
    assert Skip.from_dict(skip.to_dict()) == skip


def test_a_status_without_skip_has_no_field_and_old_statuses_parse():
    payload = _status().to_bytes()
    assert "skipped" not in json.loads(payload)
    assert StatusMessage.from_bytes(payload).skipped is None
    old = {"schema": "fedmq.status/1", "agent": "pi-1", "state": "online", "issued_at": 1.0}
    assert StatusMessage.from_bytes(json.dumps(old).encode()).skipped is None


@pytest.mark.parametrize("kw, error", [
    ({"code": "tired"}, "skip code must be one of"),
    ({"round_id": -1}, "round_id must be an integer >= 0"),
    ({"round_id": True}, "round_id must be an integer >= 0"),
    ({"run_id": "no spaces"}, "invalid run id"),
    ({"run_id": ""}, "invalid run id"),
    ({"detail": "x" * (MAX_DETAIL + 1)}, "at most 200 characters"),
])
def test_invalid_skip_is_rejected(kw, error):
    fields = {"run_id": "run-1", "round_id": 1, "code": "data-error", "detail": "", **kw}
    with pytest.raises(ProtocolError, match=error):
        Skip(**fields)  # type: ignore[arg-type]


def test_make_cuts_a_long_detail_to_fit():
    skip = Skip.make("run-1", 1, "data-error", "y" * 500)
    assert len(skip.detail) == MAX_DETAIL and skip.detail.endswith("...")


@pytest.mark.parametrize("skipped, error", [
    ("data-error", "skipped must be a JSON object"),
    ([], "skipped must be a JSON object"),
    ({"round_id": 1, "code": "data-error", "detail": ""}, "'run_id' missing"),
    ({"run_id": "r", "round_id": "1", "code": "data-error", "detail": ""}, "'round_id'"),
    ({"run_id": "r", "round_id": 1.0, "code": "data-error", "detail": ""}, "'round_id'"),
    ({"run_id": "r", "round_id": 1, "code": "nope", "detail": ""}, "skip code"),
    ({"run_id": "r", "round_id": 1, "code": "data-error"}, "'detail' missing"),
    ({"run_id": "r", "round_id": 1, "code": "data-error", "detail": 5}, "'detail'"),
])
def test_malformed_skipped_field_is_a_protocol_error(skipped, error):
    doc = {"schema": "fedmq.status/1", "agent": "pi-1", "state": "online", "issued_at": 1.0,
           "skipped": skipped}
    with pytest.raises(ProtocolError, match=error):
        StatusMessage.from_bytes(json.dumps(doc).encode())


def test_status_refuses_a_skip_that_is_not_a_skip():
    with pytest.raises(ProtocolError, match="skipped must be"):
        _status(skipped={"code": "data-error"})
