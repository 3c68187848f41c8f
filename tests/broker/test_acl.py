"""The embedded broker's topic ACL, Last Will check and payload cap, on a real amqtt broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mqtt_support import USERS
from support import AGGREGATOR_SIGNER, EnrolledFleet, agent_config, local_data

from fedmq.aggregator.service import Aggregator
from fedmq.broker.acl import FleetAcl, password_file_users
from fedmq.broker.cli import load_settings
from fedmq.broker.config import MIN_PAYLOAD_CAP, BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings

T = Topics("plant", "fedmq")


def acl_settings(password_file: Path, **kw) -> BrokerSettings:
    return BrokerSettings(**{"port": free_port(), "password_file": str(password_file),
                             "allow_anonymous": False, "acl": True, "fleet": "plant", **kw})


@pytest.fixture
def acl_broker(password_file: Path) -> Iterator[int]:
    settings = acl_settings(password_file, max_payload_bytes=MIN_PAYLOAD_CAP)
    with EmbeddedBroker(settings):
        yield settings.port


def login(probe, port: int, user: str, client_id: str | None = None, **kw):
    p = probe(port, client_id or f"c-{user}", username=user, password=USERS[user], **kw)
    assert p.connect(), f"{user} could not connect"
    return p


def test_normal_fleet_traffic_is_delivered(acl_broker, probe):
    agg = login(probe, acl_broker, "aggregator")
    assert agg.subscribe(T.updates_filter) and agg.subscribe(T.status_filter)
    agg.publish(T.pubkey, b"key", retain=True)
    agg.publish(T.round, b"round 1", retain=True)
    dev = login(probe, acl_broker, "dev-a", will=(T.status("dev-a"), b"offline"))
    assert dev.subscribe(T.pubkey) and dev.subscribe(T.round) and dev.subscribe(T.metrics)
    assert dev.wait_for(T.pubkey, b"key") and dev.wait_for(T.round, b"round 1")
    dev.publish(T.status("dev-a"), b"online", retain=True)
    dev.publish(T.update("dev-a"), b"ciphertexts")
    assert agg.wait_for(T.status("dev-a"), b"online")
    assert agg.wait_for(T.update("dev-a"), b"ciphertexts")
    agg.publish(T.metrics, b"loss", qos=0)
    assert dev.wait_for(T.metrics, b"loss")


def test_agent_cannot_publish_as_another_agent_or_as_the_aggregator(acl_broker, probe):
    agg = login(probe, acl_broker, "aggregator")
    assert agg.subscribe(T.updates_filter) and agg.subscribe(T.status_filter)
    agg.publish(T.round, b"real round", retain=True)
    dev_b = login(probe, acl_broker, "dev-b")
    assert dev_b.subscribe(T.round) and dev_b.wait_for(T.round, b"real round")

    dev_a = login(probe, acl_broker, "dev-a")
    dev_a.publish(T.update("dev-b"), b"forged update")
    dev_a.publish(T.status("dev-b"), b"offline", retain=True)
    dev_a.publish(T.round, b"forged round", retain=True)
    dev_a.publish(T.pubkey, b"forged key", retain=True)
    dev_a.publish(T.update("dev-a"), b"own update")  # positive control, sent last
    assert agg.wait_for(T.update("dev-a"), b"own update")
    assert agg.got(T.update("dev-b")) == [] and agg.got(T.status("dev-b")) == []
    agg.publish(T.round, b"round 2", retain=True)  # dev-b's positive control
    assert dev_b.wait_for(T.round, b"round 2")
    assert dev_b.got(T.round) == [b"real round", b"round 2"]
    late = login(probe, acl_broker, "dev-b", client_id="late")
    assert late.subscribe(T.round) and late.subscribe(T.pubkey)
    assert late.wait_for(T.round, b"round 2")
    assert late.got(T.pubkey) == []  # the forged retained key was never stored


def test_notices_reach_only_the_agent_they_name(acl_broker, probe):
    """An agent reads only its own notices (they say what is wrong with it) and cannot
    publish notices at all."""
    agg = login(probe, acl_broker, "aggregator")
    dev_a, dev_b = login(probe, acl_broker, "dev-a"), login(probe, acl_broker, "dev-b")
    assert dev_a.subscribe(T.notice("dev-a")) and dev_b.subscribe(T.notice("dev-b"))
    for topic in (T.notice("dev-b"), T.notices_filter, f"{T.base}/notice/#"):
        assert not dev_a.subscribe(topic), topic
    dev_a.publish(T.notice("dev-b"), b"forged notice")
    dev_a.publish(T.notice("dev-a"), b"self-made notice")
    agg.publish(T.notice("dev-b"), b"notice for b")  # positive controls, sent last
    agg.publish(T.notice("dev-a"), b"notice for a")
    assert dev_b.wait_for(T.notice("dev-b"), b"notice for b")
    assert dev_a.wait_for(T.notice("dev-a"), b"notice for a")
    assert dev_b.got(T.notice("dev-b")) == [b"notice for b"]
    assert dev_a.got(T.notice("dev-a")) == [b"notice for a"]
    assert dev_a.got(T.notice("dev-b")) == []


def test_subscriptions_outside_the_acl_are_refused(acl_broker, probe):
    dev = login(probe, acl_broker, "dev-a")
    for topic in (T.updates_filter, T.update("dev-b"), T.status_filter, "fedmq/plant/#",
                  "#", "fedmq/other/round", "$SYS/#"):
        assert not dev.subscribe(topic), topic
    agg = login(probe, acl_broker, "aggregator")
    assert not agg.subscribe("#")
    assert agg.subscribe(T.updates_filter)


def test_anonymous_clients_get_nothing(password_file, probe):
    settings = acl_settings(password_file)
    with EmbeddedBroker(settings):
        assert not probe(settings.port, "anon").connect()
        assert not probe(settings.port, "liar", username="dev-a", password="wrong").connect()
    # Even where anonymous logins are allowed, the ACL gives them no topic at all.
    open_settings = BrokerSettings(port=free_port(), password_file=str(password_file),
                                   allow_anonymous=True, acl=True, fleet="plant")
    with EmbeddedBroker(open_settings):
        port = open_settings.port
        anon = probe(port, "anon")
        assert anon.connect()
        assert not anon.subscribe(T.round) and not anon.subscribe(T.updates_filter)
        agg = login(probe, port, "aggregator")
        assert agg.subscribe(T.updates_filter)
        anon.publish(T.update("dev-a"), b"anonymous update")
        login(probe, port, "dev-a").publish(T.update("dev-a"), b"real update")
        assert agg.wait_for(T.update("dev-a"), b"real update")
        assert agg.got(T.update("dev-a")) == [b"real update"]


def test_last_will_outside_the_acl_is_refused_at_connect(acl_broker, probe):
    forged = probe(acl_broker, "w1", username="dev-a", password=USERS["dev-a"],
                   will=(T.round, b"forged round"))
    assert not forged.connect()
    assert login(probe, acl_broker, "dev-a", client_id="w2", will=(T.status("dev-a"), b"off"))


def test_taken_over_session_receives_only_what_its_new_user_may_read(acl_broker, probe):
    agg = probe(acl_broker, "agg-session", username="aggregator",
                password=USERS["aggregator"], clean_session=False)
    assert agg.connect() and agg.subscribe(T.updates_filter)
    agg.close()
    # dev-b resumes the aggregator's session (same client id): the subscription on
    # update/+ comes with it, but messages are checked against dev-b's rights.
    thief = probe(acl_broker, "agg-session", username="dev-b", password=USERS["dev-b"],
                  clean_session=False)
    assert thief.connect() and thief.subscribe(T.round)
    watcher = login(probe, acl_broker, "aggregator", client_id="agg-watch")
    assert watcher.subscribe(T.updates_filter)
    login(probe, acl_broker, "dev-a").publish(T.update("dev-a"), b"secret update")
    assert watcher.wait_for(T.update("dev-a"), b"secret update")  # it was broadcast...
    watcher.publish(T.round, b"round 2")
    assert thief.wait_for(T.round, b"round 2")  # ...before this positive control
    assert thief.got(T.update("dev-a")) == []


def test_oversize_payload_is_never_delivered(acl_broker, probe):
    agg = login(probe, acl_broker, "aggregator")
    assert agg.subscribe(T.updates_filter)
    big = login(probe, acl_broker, "dev-a")
    big.publish(T.update("dev-a"), b"x" * (MIN_PAYLOAD_CAP + 1), qos=0)
    assert big.disconnected.wait(5), "the broker kept a client that sent an oversize payload"
    at_cap = login(probe, acl_broker, "dev-b")
    at_cap.publish(T.update("dev-b"), b"y" * MIN_PAYLOAD_CAP)
    assert agg.wait_for(T.update("dev-b"), b"y" * MIN_PAYLOAD_CAP)
    assert agg.got(T.update("dev-a")) == []


def test_a_fleet_round_runs_under_the_acl(password_file, make_aggregator, keypair):
    """The real roles, logged in as their users, need nothing the ACL forbids."""
    settings = BrokerSettings(port=free_port(), password_file=str(password_file),
                              allow_anonymous=False, acl=True, fleet="test")
    port = settings.port

    def mqtt(user: str) -> MqttSettings:
        return MqttSettings(port=port, username=user, password=USERS[user], connect_timeout=5)

    with EmbeddedBroker(settings):
        agents = [EdgeAgent(replace(agent_config(port, name), mqtt=mqtt(name)),
                            data=local_data(i, 40)) for i, name in enumerate(["dev-a", "dev-b"])]
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        config = make_aggregator(port, rounds=1, quorum=2, min_agents=2).config
        aggregator = Aggregator(replace(config, mqtt=mqtt("aggregator")), keypair=keypair,
                                signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet())
        try:
            aggregator.run()
        finally:
            for a in agents:
                a.stop()
            for t in threads:
                t.join(5)
    assert [r.closed_by for r in aggregator.results] == ["all"]


def test_acl_settings_are_checked(password_file, tmp_path):
    assert password_file_users(password_file) == list(USERS)
    acl = acl_settings(password_file).fleet_acl()
    assert acl == FleetAcl(T, ("aggregator",), ("dev-a", "dev-b"))
    assert acl.publish_lists()["dev-a"] == [T.update("dev-a"), T.status("dev-a")]
    assert acl.subscribe_lists()["dev-a"] == [T.pubkey, T.round, T.metrics, T.notice("dev-a")]
    assert T.notices_filter in acl.publish_lists()["aggregator"]
    only_a = acl_settings(password_file, agents=["dev-a"]).fleet_acl()
    assert only_a is not None and only_a.agents == ("dev-a",)
    for kw, match in [
        ({"fleet": None}, "needs broker.fleet"),
        ({"agents": ["dev-c"]}, "dev-c of the broker ACL are not in"),
        ({"aggregator_users": ["dev-a"], "agents": ["dev-a"]}, "both aggregator and agent"),
        ({"aggregator_users": []}, "at least one aggregator"),
        ({"aggregator_users": "aggregator"}, "list of user names"),
        ({"topic_prefix": "a/#"}, "invalid topic prefix"),
        ({"max_payload_bytes": 1000}, "max_payload_bytes"),
        ({"max_payload_bytes": "4M"}, "max_payload_bytes"),
        ({"acl": "yes"}, "true or false"),
    ]:
        with pytest.raises(ConfigError, match=match):
            acl_settings(password_file, **kw)
    with pytest.raises(ConfigError, match=r"needs a broker\.password_file"):
        BrokerSettings(acl=True, fleet="plant")
    with pytest.raises(ConfigError, match=r"only apply with broker\.acl = true"):
        BrokerSettings(password_file=str(password_file), fleet="plant")
    with pytest.raises(ConfigError, match="anonymous"):
        FleetAcl(T, ("aggregator",), ("anonymous",))


def test_gateway_example_config_turns_the_acl_on(tmp_path):
    text = Path("configs/broker-gateway.toml").read_text()
    (tmp_path / "passwords.txt").write_text("aggregator:x\npi-001:x\n")
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("server.crt", "server.key"):
        (tls / name).write_text("")
    (tmp_path / "broker.toml").write_text(text)
    settings = load_settings(tmp_path / "broker.toml")
    assert settings.acl and not settings.allow_anonymous
    acl = settings.fleet_acl()
    assert acl is not None and acl.agents == ("pi-001",)
