"""Folding the fleet's messages into the dashboard's state: taken, ignored and counted."""

from __future__ import annotations

import json

import pytest
from support import AGGREGATOR_SIGNER

from fedmq.dashboard.view import FleetView, round_row
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.signing import Signer, sign_document
from fedmq.protocol.messages import MetricsMessage, RoundMessage, StatusMessage, TrainingSettings
from fedmq.protocol.progress import ProgressMessage
from fedmq.protocol.topics import Topics

T = Topics("f")
SPEC = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)
OTHER = Signer.from_seed(b"not the aggregator")


def view() -> FleetView:
    return FleetView.for_fleet(T, AGGREGATOR_SIGNER.public_hex)


def round_msg(round_id=2, state="training", run_id="run1", issued_at=10.0, **kw) -> RoundMessage:
    return RoundMessage(fleet="f", round_id=round_id, model_version=round_id - 1, state=state,
                        spec=SPEC, params=(0.0, 0.0, 0.0), deadline=100.0,
                        settings=TrainingSettings(), key_fingerprint="k" * 64,
                        codec_digest="d" * 32, run_id=run_id, issued_at=issued_at, **kw)


def progress(round_id=2, run_id="run1", issued_at=11.0, **kw) -> ProgressMessage:
    base = dict(fleet="f", run_id=run_id, round_id=round_id, phase="training", rounds=5,
                model_version=round_id - 1, opened_at=50.0, deadline=100.0,
                expected=("a", "b", "c", "d"), reported=("a",), skipped={"d": "data-error"},
                rejected={"forged": 1}, relays={"r1": ("e", "f")}, enrolled=6, online=5,
                issued_at=issued_at)
    return ProgressMessage(**{**base, **kw})


def metrics(round_id=1, run_id="run1", **kw) -> MetricsMessage:
    base = dict(fleet="f", round_id=round_id, model_version=round_id, expected=4, reported=4,
                rejected=2, total_weight=40.0, seconds=1.5, update_norm=0.1, closed_by="all",
                evaluation={"n": 40, "loss": 0.5, "metrics": {"accuracy": 0.8,
                                                              "balanced_accuracy": 0.7}},
                run_id=run_id, rounds=5, update_bytes=4000, model_bytes=300,
                rejected_by={"not-enrolled": 2}, issued_at=12.0)
    return MetricsMessage(**{**base, **kw})


def fold(v: FleetView, *messages: tuple[str, bytes]) -> list[bool]:
    return [v.apply(topic, payload) for topic, payload in messages]


def test_an_open_round_shows_who_reported_waits_and_skips():
    v = view()
    assert fold(v, (T.round, round_msg().to_bytes(AGGREGATOR_SIGNER)),
                (T.progress, progress().to_bytes(AGGREGATOR_SIGNER)),
                (T.metrics, metrics().to_bytes(AGGREGATOR_SIGNER)),
                (T.status("a"), StatusMessage("a", "online").to_bytes())) == [True] * 4
    s = v.state(now=60.0)
    assert s["run"] == {"id": "run1", "phase": "training", "reason": "", "round": 2,
                        "rounds": 5, "model_version": 1, "opened_at": 50.0, "deadline": 100.0}
    d = s["devices"]
    assert (d["enrolled"], d["online"], d["reported"]) == (6, 5, ["a"])
    assert d["waiting"] == ["b", "c"] and d["late"] == [] and d["skipped"] == {"d": "data-error"}
    assert v.state(now=101.0)["devices"]["late"] == ["b", "c"]  # past the deadline
    assert s["relays"] == {"r1": ["e", "f"]}
    assert s["rejected"] == {"forged": 1, "not-enrolled": 2}  # closed rounds + the open one
    row = s["rounds"][0]
    assert (row["round"], row["loss"], row["accuracy"], row["update_bytes"]) == (1, 0.5, 0.8,
                                                                                 4000)
    assert s["task"] == "classification" and s["ignored"] == {}
    json.dumps(s, allow_nan=False)


def test_forged_malformed_and_foreign_messages_are_ignored_and_counted():
    v = view()
    taken = fold(v, (T.round, round_msg().to_bytes(OTHER)),  # another key
                 (T.progress, progress().to_bytes(OTHER)),
                 (T.metrics, b"{not json"), (T.round, b"\xff" * 10),
                 (T.metrics, metrics(fleet="g").to_bytes(AGGREGATOR_SIGNER)),
                 (T.status("a"), StatusMessage("b", "online").to_bytes()),
                 (T.update("a"), b"x"), ("elsewhere/x", b"y"))
    assert taken == [False] * 8
    assert v.ignored == {"forged": 2, "malformed": 2, "other-fleet": 1, "wrong-topic": 1,
                         "unexpected-topic": 2}
    assert v.state()["run"]["id"] == "" and v.state()["rounds"] == []


def test_a_signed_document_with_a_bad_field_does_not_break_the_view():
    doc = json.loads(metrics().to_bytes(AGGREGATOR_SIGNER))
    doc.pop("sig")
    doc["reported"] = "many"
    v = view()
    assert not v.apply(T.metrics, sign_document(doc, AGGREGATOR_SIGNER))
    assert v.ignored["malformed"] == 1


def test_a_new_run_starts_the_charts_again_and_stale_messages_are_ignored():
    v = view()
    fold(v, (T.round, round_msg().to_bytes(AGGREGATOR_SIGNER)),
         (T.metrics, metrics().to_bytes(AGGREGATOR_SIGNER)))
    assert len(v.state()["rounds"]) == 1
    assert fold(v, (T.round, round_msg(1, run_id="run2", issued_at=20.0).to_bytes(
        AGGREGATOR_SIGNER)))
    assert v.state()["rounds"] == [] and v.state()["run"]["id"] == "run2"
    # A retained progress of the earlier run, delivered late, changes nothing.
    assert not v.apply(T.progress, progress(issued_at=11.0).to_bytes(AGGREGATOR_SIGNER))
    assert not v.apply(T.round, round_msg(issued_at=15.0).to_bytes(AGGREGATOR_SIGNER))
    assert v.ignored == {"stale": 2}


def test_a_failed_run_shows_its_reason_and_no_deadline():
    v = view()
    fold(v, (T.round, round_msg(state="failed", reason="quorum not reached").to_bytes(
        AGGREGATOR_SIGNER)))
    s = v.state()
    assert (s["run"]["phase"], s["run"]["reason"], s["run"]["deadline"]) == (
        "failed", "quorum not reached", None)


def test_non_finite_numbers_become_null():
    """The wire cannot carry NaN (canonical JSON), but a page's JSON.parse must never see one."""
    row = round_row(metrics(evaluation={"loss": float("nan"), "metrics": {
        "accuracy": float("inf")}}))
    assert row["loss"] is None and row["accuracy"] is None


@pytest.mark.parametrize("payload", [b"", b"null", b"[]", b'{"schema": "fedmq.progress/1"}'])
def test_empty_and_odd_progress(payload):
    v = view()
    assert not v.apply(T.progress, payload)
    assert sum(v.ignored.values()) == 1


def test_the_aggregators_own_view_skips_what_a_dashboard_does_not_read():
    v = view()
    v.observe(T.notice("a"), b"notice")
    v.observe(T.trustee_request, b"request")
    v.observe(T.round, round_msg().to_bytes(AGGREGATOR_SIGNER))
    assert v.ignored == {} and v.state()["run"]["round"] == 2


def test_the_aggregators_key_is_taken_only_when_it_names_the_pinned_key(keypair):
    from fedmq.protocol.crypto.codec import CodecParams
    from fedmq.protocol.crypto.paillier import fingerprint
    from fedmq.protocol.messages import PubKeyMessage

    pub, _ = keypair

    def announced(signer: Signer, fleet: str = "f") -> bytes:
        return PubKeyMessage(fleet=fleet, n_hex=format(pub.n, "x"), fingerprint=fingerprint(pub),
                             codec=CodecParams(), signing_key=signer.public_hex).to_bytes(signer)

    v = view()
    assert not v.apply(T.pubkey, announced(OTHER))  # self-signed, but not the pinned key
    assert not v.apply(T.pubkey, announced(AGGREGATOR_SIGNER, fleet="g"))
    assert v.ignored == {"forged": 1, "other-fleet": 1} and v.state()["key"] is None
    assert v.apply(T.pubkey, announced(AGGREGATOR_SIGNER))
    assert v.state()["key"]["fingerprint"] == fingerprint(pub)
