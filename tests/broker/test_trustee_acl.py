"""Trustee users in the topic ACL: the lists, the settings, and both brokers enforcing them.

A trustee holds one share of a threshold Paillier key: it reads every update and
the aggregator's decryption requests and writes only ``trustee/reply/<its name>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_support import USERS, mosquitto_binary, running_mosquitto

from fedmq.broker.acl import FleetAcl
from fedmq.broker.cli import add_user, mosquitto_config
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.broker.mosquitto import (
    CREDENTIALS_FILE,
    MosquittoSetup,
    acl_text,
    read_credentials,
    write_files,
)
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics
from fedmq.simulation.broker import BrokerChoice, fleet_broker

T = Topics("plant", "fedmq")
TRUSTEES = {"trustee-1": "trustee-1-password", "trustee-2": "trustee-2-password"}
LOGINS = {**USERS, **TRUSTEES}
ACL = FleetAcl(T, ("aggregator",), ("dev-a", "dev-b"), tuple(TRUSTEES))


# --- the lists -------------------------------------------------------------------------

def test_a_trustee_writes_only_its_reply_and_reads_updates_key_round_and_requests():
    publish, subscribe = ACL.publish_lists(), ACL.subscribe_lists()
    assert publish["trustee-1"] == [T.trustee_reply("trustee-1")]
    assert publish["trustee-2"] == [T.trustee_reply("trustee-2")]
    assert subscribe["trustee-1"] == [T.updates_filter, T.pubkey, T.round, T.trustee_request]
    assert subscribe["trustee-2"] == subscribe["trustee-1"]


def test_the_aggregator_asks_the_trustees_and_reads_their_replies():
    publish, subscribe = ACL.publish_lists()["aggregator"], ACL.subscribe_lists()["aggregator"]
    assert T.trustee_request in publish and T.trustee_replies_filter in subscribe
    assert publish == [T.pubkey, T.round, T.metrics, T.notices_filter, T.trustee_request,
                       T.progress]
    assert subscribe == [T.updates_filter, T.status_filter, T.pubkey, T.round,
                         T.trustee_replies_filter, T.progress]


def test_agents_see_no_trustee_topic():
    trustee_topics = (f"{T.base}/trustee/",)
    for lists in (ACL.publish_lists(), ACL.subscribe_lists()):
        for agent in ACL.agents:
            assert not [t for t in lists[agent] if t.startswith(trustee_topics)], agent
    # and without trustees nothing changes for them
    plain = FleetAcl(T, ("aggregator",), ("dev-a", "dev-b"))
    assert plain.publish_lists()["dev-a"] == ACL.publish_lists()["dev-a"]
    assert plain.subscribe_lists()["dev-a"] == ACL.subscribe_lists()["dev-a"]
    assert set(plain.publish_lists()) == {"aggregator", "dev-a", "dev-b"}


def test_from_users_does_not_make_trustees_agents():
    users = ["aggregator", "dev-a", "trustee-1", "dev-b", "trustee-2"]
    acl = FleetAcl.from_users(T, ["aggregator"], users, trustee_users=["trustee-1", "trustee-2"])
    assert acl == ACL
    assert FleetAcl.from_users(T, ["aggregator"], users).agents == (
        "dev-a", "trustee-1", "dev-b", "trustee-2")  # no trustees given: all agents


@pytest.mark.parametrize(("aggregators", "agents", "trustees", "match"), [
    (("aggregator",), ("dev-a",), ("dev-a",), "both agent and trustee"),
    (("aggregator",), ("dev-a",), ("aggregator",), "both aggregator and trustee"),
    (("aggregator",), ("dev-a",), ("t1", "t1"), "listed twice"),
    (("aggregator",), ("dev-a",), ("anonymous",), "anonymous"),
    (("aggregator",), ("dev-a",), ("a/b",), "invalid user name"),
    (("aggregator",), ("dev-a",), ("t+",), "invalid user name"),
])
def test_trustee_names_are_checked(aggregators, agents, trustees, match):
    with pytest.raises(ConfigError, match=match):
        FleetAcl(T, aggregators, agents, trustees)


# --- broker.toml -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trustee_password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The broker tests' users and two trustees, in amqtt's password format."""
    path = tmp_path_factory.mktemp("trustee-logins") / "passwords.txt"
    for user, password in LOGINS.items():
        add_user(path, user, password)
    return path


def settings(password_file: Path, **kw: Any) -> BrokerSettings:
    return BrokerSettings(port=free_port(), password_file=str(password_file),
                          allow_anonymous=False, acl=True, fleet="plant", **kw)


def test_settings_pass_trustees_to_the_acl(trustee_password_file):
    # agents = None: every user of the password file but the aggregator and the trustees
    acl = settings(trustee_password_file, trustee_users=list(TRUSTEES)).fleet_acl()
    assert acl == ACL
    explicit = settings(trustee_password_file, trustee_users=["trustee-1"],
                        agents=["dev-a"]).fleet_acl()
    assert explicit == FleetAcl(T, ("aggregator",), ("dev-a",), ("trustee-1",))
    # without trustee_users, every user of the file but the aggregator is an agent
    assert settings(trustee_password_file).fleet_acl() == FleetAcl(
        T, ("aggregator",), ("dev-a", "dev-b", "trustee-1", "trustee-2"))
    config = settings(trustee_password_file, trustee_users=list(TRUSTEES)).amqtt_config()
    plugin = config["plugins"]["fedmq.broker.amqtt_ext.FleetAclPlugin"]
    assert plugin["publish_acl"]["trustee-1"] == [T.trustee_reply("trustee-1")]
    assert plugin["receive_acl"]["trustee-1"] == plugin["subscribe_acl"]["trustee-1"]
    will = config["plugins"]["fedmq.broker.amqtt_ext.WillAclPlugin"]
    assert will["publish_acl"]["trustee-2"] == [T.trustee_reply("trustee-2")]


@pytest.mark.parametrize(("kw", "match"), [
    ({"trustee_users": ["trustee-9"]}, "trustee-9 of the broker ACL are not in"),
    ({"trustee_users": ["dev-a"], "agents": ["dev-a"]}, "both agent and trustee"),
    ({"trustee_users": ["aggregator"]}, "both aggregator and trustee"),
    ({"trustee_users": "trustee-1"}, "list of user names"),
])
def test_trustee_settings_are_checked(trustee_password_file, kw, match):
    with pytest.raises(ConfigError, match=match):
        settings(trustee_password_file, **kw)


def test_trustees_need_the_acl(trustee_password_file):
    with pytest.raises(ConfigError, match=r"only apply with broker\.acl = true"):
        BrokerSettings(password_file=str(trustee_password_file), trustee_users=("trustee-1",))
    assert BrokerSettings(trustee_users=()).fleet_acl() is None


def test_trustee_users_key_in_broker_toml(trustee_password_file, tmp_path):
    (tmp_path / "broker.toml").write_text(
        f'[broker]\npassword_file = "{trustee_password_file}"\nallow_anonymous = false\n'
        'acl = true\nfleet = "plant"\ntrustee_users = ["trustee-1", "trustee-2"]\n')
    acl = BrokerSettings.from_file(tmp_path / "broker.toml").fleet_acl()
    assert acl == ACL
    (tmp_path / "bad.toml").write_text('[broker]\ntrustee_users = "trustee-1"\n')
    with pytest.raises(ConfigError, match="trustee_users: expected array"):
        BrokerSettings.from_file(tmp_path / "bad.toml")


def test_shipped_configs_have_no_trustees_yet():
    gateway = Path("configs/broker-gateway.toml").read_text()
    template = Path("fedmq/templates/broker.toml").read_text()
    assert "\ntrustee_users = []\n" in gateway and "\ntrustee_users = []\n" in template


# --- a real embedded (amqtt) broker -----------------------------------------------------------

@pytest.fixture
def trustee_broker(trustee_password_file: Path) -> Iterator[int]:
    s = settings(trustee_password_file, trustee_users=list(TRUSTEES))
    with EmbeddedBroker(s):
        yield s.port


def login(probe, port: int, user: str, **kw):
    p = probe(port, f"c-{user}", username=user, password=LOGINS[user], **kw)
    assert p.connect(), f"{user} could not connect"
    return p


def test_embedded_broker_enforces_the_trustee_acl(trustee_broker, probe):
    port = trustee_broker
    agg = login(probe, port, "aggregator")
    for topic in (T.updates_filter, T.trustee_replies_filter):
        assert agg.subscribe(topic), topic
    t1, t2 = login(probe, port, "trustee-1"), login(probe, port, "trustee-2")
    for t in (t1, t2):
        for topic in (T.updates_filter, T.pubkey, T.round, T.trustee_request):
            assert t.subscribe(topic), topic
    for topic in (T.trustee_replies_filter, T.trustee_reply("trustee-2"),
                  T.trustee_reply("trustee-1"), T.status_filter, T.notices_filter,
                  T.notice("trustee-1"), T.metrics, f"{T.base}/#", "#"):
        assert not t1.subscribe(topic), topic
    dev_a, dev_b = login(probe, port, "dev-a"), login(probe, port, "dev-b")
    assert dev_b.subscribe(T.round)
    for topic in (T.trustee_request, T.trustee_replies_filter, T.trustee_reply("trustee-1"),
                  f"{T.base}/trustee/#"):
        assert not dev_a.subscribe(topic), topic

    # What the roles are for: requests reach the trustees, updates reach them too,
    # and a trustee's reply reaches the aggregator.
    agg.publish(T.trustee_request, b"request 1")
    assert t1.wait_for(T.trustee_request, b"request 1")
    assert t2.wait_for(T.trustee_request, b"request 1")
    dev_a.publish(T.update("dev-a"), b"update a")
    assert t1.wait_for(T.update("dev-a"), b"update a")
    assert agg.wait_for(T.update("dev-a"), b"update a")

    # A trustee forges nothing.
    for topic in (T.trustee_reply("trustee-2"), T.update("trustee-1"), T.update("dev-a"),
                  T.status("trustee-1"), T.round, T.pubkey, T.trustee_request, T.metrics,
                  T.notice("dev-a")):
        t1.publish(topic, b"forged by trustee-1")
    t1.publish(T.trustee_reply("trustee-1"), b"reply 1")  # positive control, sent last
    assert agg.wait_for(T.trustee_reply("trustee-1"), b"reply 1")
    assert agg.got(T.trustee_reply("trustee-2")) == []
    assert agg.got(T.update("trustee-1")) == [] and agg.got(T.update("dev-a")) == [b"update a"]
    # An agent writes no trustee topic either.
    dev_a.publish(T.trustee_reply("dev-a"), b"forged by dev-a")
    dev_a.publish(T.trustee_reply("trustee-2"), b"forged by dev-a")
    dev_a.publish(T.trustee_request, b"forged by dev-a")
    dev_a.publish(T.update("dev-a"), b"update a2")  # positive control, sent last
    assert agg.wait_for(T.update("dev-a"), b"update a2")
    assert t2.wait_for(T.update("dev-a"), b"update a2")
    assert agg.got(T.trustee_reply("dev-a")) == [] and agg.got(T.trustee_reply("trustee-2")) == []
    t2.publish(T.trustee_reply("trustee-2"), b"reply 2")
    agg.publish(T.trustee_request, b"request 2")
    agg.publish(T.round, b"round 2")
    assert agg.wait_for(T.trustee_reply("trustee-2"), b"reply 2")
    assert t2.wait_for(T.trustee_request, b"request 2")
    assert dev_b.wait_for(T.round, b"round 2")
    assert t2.wait_for(T.round, b"round 2")  # each subscriber gets it in its own time
    assert agg.got(T.trustee_reply("trustee-2")) == [b"reply 2"]
    assert t2.got(T.trustee_request) == [b"request 1", b"request 2"]
    assert t2.got(T.round) == [b"round 2"] and dev_b.got(T.round) == [b"round 2"]
    assert t2.got(T.pubkey) == [] and dev_a.got(T.trustee_request) == []


def test_a_trustee_last_will_goes_only_to_its_reply(trustee_broker, probe):
    forged = probe(trustee_broker, "w1", username="trustee-1", password=LOGINS["trustee-1"],
                   will=(T.update("trustee-1"), b"forged"))
    assert not forged.connect()
    assert login(probe, trustee_broker, "trustee-1", will=(T.trustee_reply("trustee-1"), b"x"))


# --- Mosquitto -------------------------------------------------------------------------------

def section(text: str, user: str) -> list[str]:
    return text.split(f"user {user}\n")[1].split("\n\n")[0].splitlines()


def test_mosquitto_acl_text_for_trustees():
    text = acl_text(ACL)
    assert section(text, "trustee-1") == [
        # the patterns (update/%u, status/%u, notice/%u) apply to every user: denied first
        "topic deny fedmq/plant/update/trustee-1",
        "topic deny fedmq/plant/status/trustee-1",
        "topic deny fedmq/plant/notice/trustee-1",
        "topic write fedmq/plant/trustee/reply/trustee-1",
        "topic read fedmq/plant/update/+",
        "topic read fedmq/plant/pubkey",
        "topic read fedmq/plant/round",
        "topic read fedmq/plant/trustee/request",
    ]
    aggregator = section(text, "aggregator")
    assert "topic write fedmq/plant/trustee/request" in aggregator
    assert "topic read fedmq/plant/trustee/reply/+" in aggregator
    for agent in ("dev-a", "dev-b"):
        assert not [line for line in section(text, agent) if "trustee" in line]
    assert [line for line in text.splitlines() if line.startswith("pattern ")] == [
        "pattern write fedmq/plant/update/%u", "pattern write fedmq/plant/status/%u",
        "pattern read fedmq/plant/notice/%u"]
    assert aggregator[:3] == ["topic deny fedmq/plant/update/aggregator",
                              "topic deny fedmq/plant/status/aggregator",
                              "topic deny fedmq/plant/notice/aggregator"]
    setup = MosquittoSetup(acl=ACL)
    assert setup.users() == ("aggregator", "dev-a", "dev-b", "trustee-1", "trustee-2")


def test_mosquitto_config_cli_takes_trustees(tmp_path):
    out = tmp_path / "m"
    said = mosquitto_config(str(out), "plant", agents=["dev-a"], trustee_users=["trustee-1"])
    assert "(3 users" in said
    assert set(read_credentials(out / CREDENTIALS_FILE)) == {"aggregator", "dev-a", "trustee-1"}
    assert "user trustee-1\ntopic deny fedmq/plant/update/trustee-1\n" in (out / "acl").read_text()
    with pytest.raises(ConfigError, match="both agent and trustee"):
        mosquitto_config(str(out), "plant", agents=["dev-a"], trustee_users=["dev-a"])


@pytest.fixture
def trustee_mosquitto(tmp_path: Path) -> Iterator[Callable[[], tuple[int, dict[str, str], Path]]]:
    mosquitto_binary()  # skip (or fail in CI) before writing anything
    with contextlib.ExitStack() as running:

        def start() -> tuple[int, dict[str, str], Path]:
            port = free_port()
            out = tmp_path / f"mosquitto-{port}"
            written = write_files(out, MosquittoSetup(acl=ACL, host="127.0.0.1", port=port))
            log = out / "mosquitto.log"
            running.enter_context(running_mosquitto(written.conf, port, log))
            return port, read_credentials(written.credentials), log

        yield start


def test_mosquitto_enforces_the_trustee_acl(trustee_mosquitto, probe):
    """Mosquitto grants every SUBSCRIBE and checks each message on delivery, so the
    checks are on what arrives: "subscribed or not, it must deliver nothing"."""
    port, creds, log = trustee_mosquitto()
    noise = [line for line in log.read_text().splitlines()
             if any(w in line for w in ("Warning", "Error", "does not contain"))
             and "should not be run as root" not in line]
    assert noise == []  # `topic deny` is understood

    def login_m(user: str):
        p = probe(port, f"c-{user}", username=user, password=creds[user])
        assert p.connect(), f"mosquitto refused {user}"
        return p

    agg = login_m("aggregator")
    for topic in (T.updates_filter, T.status_filter, T.trustee_replies_filter):
        agg.subscribe(topic)
    t1, t2 = login_m("trustee-1"), login_m("trustee-2")
    for topic in (T.updates_filter, T.pubkey, T.round, T.trustee_request):
        t1.subscribe(topic)
        t2.subscribe(topic)
    for topic in (T.trustee_replies_filter, T.status_filter, T.notices_filter, T.metrics):
        t1.subscribe(topic)  # granted or not, nothing may arrive
    dev_a, dev_b = login_m("dev-a"), login_m("dev-b")
    dev_b.subscribe(T.round)
    for topic in (T.trustee_request, T.trustee_replies_filter, f"{T.base}/trustee/#"):
        dev_a.subscribe(topic)

    agg.publish(T.trustee_request, b"request 1")
    assert t1.wait_for(T.trustee_request, b"request 1")
    assert t2.wait_for(T.trustee_request, b"request 1")
    dev_a.publish(T.update("dev-a"), b"update a")
    dev_a.publish(T.status("dev-a"), b"online")
    assert t1.wait_for(T.update("dev-a"), b"update a")
    assert agg.wait_for(T.status("dev-a"), b"online")

    # The patterns would grant these two to any user: the deny lines refuse them.
    for topic in (T.update("trustee-1"), T.status("trustee-1"),
                  T.trustee_reply("trustee-2"), T.update("dev-a"), T.round, T.pubkey,
                  T.trustee_request, T.metrics, T.notice("dev-a")):
        t1.publish(topic, b"forged by trustee-1")
    t1.publish(T.trustee_reply("trustee-1"), b"reply 1")  # positive control, sent last
    assert agg.wait_for(T.trustee_reply("trustee-1"), b"reply 1")
    assert agg.got(T.update("trustee-1")) == [] and agg.got(T.status("trustee-1")) == []
    agg.publish(T.update("aggregator"), b"update of nobody")  # nor does the aggregator
    agg.publish(T.trustee_request, b"request 1b")
    assert t1.wait_for(T.trustee_request, b"request 1b")
    assert t1.got(T.update("aggregator")) == []
    assert agg.got(T.trustee_reply("trustee-2")) == []
    assert agg.got(T.update("dev-a")) == [b"update a"]

    dev_a.publish(T.trustee_reply("dev-a"), b"forged by dev-a")
    dev_a.publish(T.trustee_request, b"forged by dev-a")
    dev_a.publish(T.update("dev-a"), b"update a2")  # positive control, sent last
    assert agg.wait_for(T.update("dev-a"), b"update a2")
    assert t2.wait_for(T.update("dev-a"), b"update a2")
    t2.publish(T.trustee_reply("trustee-2"), b"reply 2")
    agg.publish(T.trustee_request, b"request 2")
    agg.publish(T.round, b"round 2")
    agg.publish(T.metrics, b"loss", qos=0)
    agg.publish(T.notice("dev-a"), b"notice for a")
    agg.publish(T.round, b"round 3")  # trustee-1's positive control, sent last
    assert t1.wait_for(T.round, b"round 3")
    assert agg.wait_for(T.trustee_reply("trustee-2"), b"reply 2")
    assert t1.wait_for(T.trustee_request, b"request 2")
    assert t2.wait_for(T.round, b"round 2") and dev_b.wait_for(T.round, b"round 2")
    assert agg.got(T.trustee_reply("dev-a")) == []
    assert agg.got(T.trustee_reply("trustee-2")) == [b"reply 2"]
    assert t1.got(T.trustee_request) == [b"request 1", b"request 1b", b"request 2"]
    assert dev_b.got(T.round)[0] == b"round 2" and t2.got(T.pubkey) == []
    # trustee-1 read no other trustee's reply, no status, metrics or notice
    assert t1.got(T.trustee_reply("trustee-2")) == [] and t1.got(T.status("dev-a")) == []
    assert t1.got(T.metrics) == [] and t1.got(T.notice("dev-a")) == []
    assert [t for t, _ in dev_a.received if "/trustee/" in t] == []


def test_a_simulated_fleet_on_mosquitto_gets_trustee_logins(tmp_path, probe):
    mosquitto_binary()
    with fleet_broker(BrokerChoice("mosquitto"), topics=T, agent_ids=["dev-a"],
                      out_dir=tmp_path, own_process=False,
                      trustee_users=["trustee-1"]) as fleet:
        login_t = fleet.trustee("trustee-1")
        assert login_t.username == "trustee-1" and login_t.password
        assert fleet.agent("dev-a").username == "dev-a"
        t1 = probe(login_t.port, "t1", username="trustee-1", password=login_t.password)
        agg = probe(login_t.port, "agg", username="aggregator",
                    password=fleet.aggregator.password)
        assert t1.connect() and agg.connect()
        agg.subscribe(T.trustee_replies_filter)
        t1.publish(T.trustee_reply("trustee-1"), b"reply")
        assert agg.wait_for(T.trustee_reply("trustee-1"), b"reply")
    acl = (tmp_path / "mosquitto" / "acl").read_text()
    assert "user trustee-1\n" in acl
