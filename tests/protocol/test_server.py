"""The server optimizer's settings: validated, signed into the round, absent when default."""

from __future__ import annotations

import json

import pytest

from fedmq.models import ModelSpec
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import RoundMessage, TrainingSettings
from fedmq.protocol.server import OPTIMIZERS, ServerSettings

SPEC = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)
SIGNER = Signer.from_seed(b"server-settings-test")


def round_msg(**kw):
    base = dict(fleet="f", round_id=3, model_version=2, state="training", spec=SPEC,
                params=(0.1, -0.2, 0.3), deadline=1e9, settings=TrainingSettings(),
                key_fingerprint="k" * 64, codec_digest="d" * 32, run_id="run1",
                issued_at=1.7e9)
    return RoundMessage(**{**base, **kw})


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_settings_round_trip_in_a_signed_round(optimizer):
    server = ServerSettings(optimizer=optimizer, server_lr=0.3, momentum=0.5, beta1=0.8,
                            beta2=0.95, tau=1e-2)
    assert ServerSettings.from_dict(server.to_dict()) == server
    msg = round_msg(server=server)
    back = RoundMessage.from_bytes(msg.to_bytes(SIGNER), verify_with=SIGNER.public_key)
    assert back == msg and back.server == server


def test_the_default_is_not_on_the_wire_so_old_agents_and_old_rounds_parse():
    doc = json.loads(round_msg().to_bytes(SIGNER))
    assert "server" not in doc  # byte for byte what gateways before [server] signed
    old = json.loads(round_msg().to_bytes(SIGNER))
    assert RoundMessage.from_bytes(json.dumps(old).encode(),
                                   verify_with=SIGNER.public_key).server == ServerSettings()
    # Only the non-default keys need be there; a later gateway's extra key is ignored.
    assert ServerSettings.from_dict({"optimizer": "fedadam", "later": 1}) == ServerSettings(
        optimizer="fedadam")


def test_the_server_settings_are_signed():
    doc = json.loads(round_msg(server=ServerSettings(optimizer="fedadam")).to_bytes(SIGNER))
    doc["server"]["server_lr"] = 100.0
    with pytest.raises(ProtocolError, match="bad signature"):
        RoundMessage.from_bytes(json.dumps(doc).encode(), verify_with=SIGNER.public_key)


@pytest.mark.parametrize(("doc", "message"), [
    ({"optimizer": "sgd"}, "optimizer must be one of fedavg, fedavgm"),
    ({"optimizer": 3}, "optimizer must be a string"),
    ({"server_lr": 0}, r"server_lr must be in \(0, 100\]"),
    ({"tau": -1e-3}, r"tau in \(0, 1\]"),
    ({"tau": 1e200}, r"tau in \(0, 1\]"),  # tau^2 overflowed the state
    ({"server_lr": 1e300}, r"server_lr must be in \(0, 100\]"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"beta2": -0.1}, r"beta2 must be in \[0, 1\)"),
    ({"beta1": True}, "must be a number"),
    ({"server_lr": "1"}, "must be a number"),
    ({"server_lr": float("nan")}, "must be a finite number"),
    ({"tau": 10**400}, "'tau' is out of range"),
    ([], "must be an object"),
])
def test_bad_settings_are_one_protocol_error(doc, message):
    with pytest.raises(ProtocolError, match=message):
        ServerSettings.from_dict(doc)


def test_describe_names_the_optimizer_and_what_it_uses():
    assert ServerSettings().describe() == "fedavg"
    assert ServerSettings(optimizer="fedavgm").describe() == (
        "fedavgm (server_lr 1, momentum 0.9)")
    assert ServerSettings(optimizer="fedyogi", server_lr=0.1).describe() == (
        "fedyogi (server_lr 0.1, beta1 0.9, beta2 0.99, tau 0.001)")


def test_the_recommended_steps_are_bench_noniids_per_model_kind() -> None:
    """What `fedmq init gateway` writes and the end-of-run hint names (docs/benchmarks.md)."""
    from fedmq.protocol.server import RECOMMENDED, recommended_keys

    assert recommended_keys("logistic") == {"optimizer": "fedadam", "server_lr": 0.2}
    assert recommended_keys("linear") == {"optimizer": "fedavgm", "server_lr": 1.0,
                                          "momentum": 0.7}
    assert all(ServerSettings(**recommended_keys(k)) == s
               for k, s in RECOMMENDED.items())
    assert ServerSettings().optimizer == "fedavg"  # the code's default stays FedAvg
