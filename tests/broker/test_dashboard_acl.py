"""Dashboard users in the topic ACL: the lists, the settings, and both brokers enforcing them.

A dashboard (``fedmq dashboard``, the fleet's live page) only reads: the retained
key, round and progress, the metrics and the agents' retained status. It publishes
nothing, and reads no update, notice or trustee topic. ``progress`` names the
devices of a round, so agents never receive it; only the aggregator writes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mqtt_support import USERS, Probe, mosquitto_binary, running_mosquitto

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

T = Topics("plant", "fedmq")
DASHBOARDS = {"dashboard": "dashboard-password", "wall": "wall-password"}
LOGINS = {**USERS, "trustee-1": "trustee-1-password", **DASHBOARDS}
ACL = FleetAcl(T, ("aggregator",), ("dev-a", "dev-b"), ("trustee-1",), tuple(DASHBOARDS))
READS = [T.pubkey, T.round, T.metrics, T.progress, T.status_filter]


# --- the lists -------------------------------------------------------------------------

def test_a_dashboard_publishes_nothing_and_reads_retained_topics_metrics_and_statuses():
    publish, subscribe = ACL.publish_lists(), ACL.subscribe_lists()
    assert publish["dashboard"] == [] and publish["wall"] == []
    assert subscribe["dashboard"] == READS and subscribe["wall"] == READS
    never = (T.updates_filter, T.notices_filter, T.trustee_request, T.trustee_replies_filter)
    assert not set(never) & set(subscribe["dashboard"])


def test_only_the_aggregator_writes_progress_and_no_agent_reads_it():
    publish, subscribe = ACL.publish_lists(), ACL.subscribe_lists()
    assert T.progress in publish["aggregator"] and T.progress in subscribe["aggregator"]
    assert T.progress not in ACL.broadcast()  # what agents read
    for user in ("dev-a", "dev-b", "trustee-1"):
        assert T.progress not in publish[user] and T.progress not in subscribe[user], user
    assert [u for u, topics in publish.items() if T.progress in topics] == ["aggregator"]
    # and dashboards change nothing for the other roles
    plain = FleetAcl(T, ("aggregator",), ("dev-a", "dev-b"), ("trustee-1",))
    for user in ("aggregator", "dev-a", "dev-b", "trustee-1"):
        assert plain.publish_lists()[user] == publish[user]
        assert plain.subscribe_lists()[user] == subscribe[user]


def test_from_users_does_not_make_dashboards_agents():
    users = ["aggregator", "dev-a", "dashboard", "trustee-1", "dev-b", "wall"]
    acl = FleetAcl.from_users(T, ["aggregator"], users, trustee_users=["trustee-1"],
                              dashboard_users=["dashboard", "wall"])
    assert acl == ACL
    assert FleetAcl.from_users(T, ["aggregator"], users, ["trustee-1"]).agents == (
        "dev-a", "dashboard", "dev-b", "wall")  # no dashboards given: agents


@pytest.mark.parametrize(("agents", "trustees", "dashboards", "match"), [
    (("dev-a",), (), ("dev-a",), "both agent and dashboard"),
    (("dev-a",), (), ("aggregator",), "both aggregator and dashboard"),
    (("dev-a",), ("t1",), ("t1",), "both trustee and dashboard"),
    (("dev-a",), (), ("d", "d"), "listed twice"),
    (("dev-a",), (), ("anonymous",), "anonymous"),
    (("dev-a",), (), ("a/b",), "invalid user name"),
    (("dev-a",), (), ("d#",), "invalid user name"),
])
def test_dashboard_names_are_checked(agents, trustees, dashboards, match):
    with pytest.raises(ConfigError, match=match):
        FleetAcl(T, ("aggregator",), agents, trustees, dashboards)


# --- broker.toml -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard_password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The broker tests' users, a trustee and two dashboards (amqtt's password format)."""
    path = tmp_path_factory.mktemp("dashboard-logins") / "passwords.txt"
    for user, password in LOGINS.items():
        add_user(path, user, password)
    return path


def settings(password_file: Path, **kw: Any) -> BrokerSettings:
    return BrokerSettings(port=free_port(), password_file=str(password_file),
                          allow_anonymous=False, acl=True, fleet="plant", **kw)


def test_settings_pass_dashboards_to_the_acl(dashboard_password_file):
    # agents = None: every user of the password file but the other roles
    s = settings(dashboard_password_file, trustee_users=["trustee-1"],
                 dashboard_users=list(DASHBOARDS))
    assert s.fleet_acl() == ACL
    explicit = settings(dashboard_password_file, dashboard_users=["wall"], agents=["dev-a"])
    assert explicit.fleet_acl() == FleetAcl(T, ("aggregator",), ("dev-a",), (), ("wall",))
    config = s.amqtt_config()
    plugin = config["plugins"]["fedmq.broker.amqtt_ext.FleetAclPlugin"]
    assert plugin["publish_acl"]["dashboard"] == []
    assert plugin["subscribe_acl"]["dashboard"] == READS
    assert plugin["receive_acl"]["dashboard"] == READS
    will = config["plugins"]["fedmq.broker.amqtt_ext.WillAclPlugin"]
    assert will["publish_acl"]["wall"] == []


@pytest.mark.parametrize(("kw", "match"), [
    ({"dashboard_users": ["screen"]}, "screen of the broker ACL are not in"),
    ({"dashboard_users": ["dev-a"], "agents": ["dev-a"]}, "both agent and dashboard"),
    ({"dashboard_users": ["aggregator"]}, "both aggregator and dashboard"),
    ({"dashboard_users": ["trustee-1"], "trustee_users": ["trustee-1"]},
     "both trustee and dashboard"),
    ({"dashboard_users": "dashboard"}, "list of user names"),
])
def test_dashboard_settings_are_checked(dashboard_password_file, kw, match):
    with pytest.raises(ConfigError, match=match):
        settings(dashboard_password_file, **kw)


def test_dashboards_need_the_acl(dashboard_password_file):
    with pytest.raises(ConfigError, match=r"dashboard_users only apply with broker\.acl = true"):
        BrokerSettings(password_file=str(dashboard_password_file), dashboard_users=("wall",))
    assert BrokerSettings(dashboard_users=()).fleet_acl() is None


def test_dashboard_users_key_in_broker_toml(dashboard_password_file, tmp_path):
    (tmp_path / "broker.toml").write_text(
        f'[broker]\npassword_file = "{dashboard_password_file}"\nallow_anonymous = false\n'
        'acl = true\nfleet = "plant"\ntrustee_users = ["trustee-1"]\n'
        'dashboard_users = ["dashboard", "wall"]\n')
    assert BrokerSettings.from_file(tmp_path / "broker.toml").fleet_acl() == ACL
    (tmp_path / "bad.toml").write_text('[broker]\ndashboard_users = "dashboard"\n')
    with pytest.raises(ConfigError, match="dashboard_users: expected array"):
        BrokerSettings.from_file(tmp_path / "bad.toml")


def test_the_gateway_template_lists_the_dashboard_login():
    template = Path("fedmq/templates/broker.toml").read_text()
    assert '\ndashboard_users = ["dashboard"]\n' in template


# --- Mosquitto's files ------------------------------------------------------------------------

def section(text: str, user: str) -> list[str]:
    return text.split(f"user {user}\n")[1].split("\n\n")[0].splitlines()


def test_mosquitto_acl_text_for_dashboards():
    text = acl_text(ACL)
    for user in DASHBOARDS:
        assert section(text, user) == [
            # the patterns (update/%u, status/%u, notice/%u) apply to every user: denied first
            f"topic deny fedmq/plant/update/{user}",
            f"topic deny fedmq/plant/status/{user}",
            f"topic deny fedmq/plant/notice/{user}",
            "topic read fedmq/plant/pubkey",
            "topic read fedmq/plant/round",
            "topic read fedmq/plant/metrics",
            "topic read fedmq/plant/progress",
            "topic read fedmq/plant/status/+",
        ]
    aggregator = section(text, "aggregator")
    assert "topic write fedmq/plant/progress" in aggregator
    assert "topic read fedmq/plant/progress" in aggregator
    for user in ("dev-a", "dev-b", "trustee-1"):
        assert not [line for line in section(text, user) if "progress" in line], user
    assert [line for line in text.splitlines() if "write" in line and "progress" in line] == [
        "topic write fedmq/plant/progress"]  # the aggregator's, and only it
    setup = MosquittoSetup(acl=ACL)
    assert setup.users() == ("aggregator", "dev-a", "dev-b", "trustee-1", "dashboard", "wall")
    # progress is longer than round: the packet cap (sized for the shortest topic) holds
    assert setup.max_packet_size == MosquittoSetup(acl=FleetAcl(
        T, ("aggregator",), ("dev-a", "dev-b"))).max_packet_size


def test_mosquitto_config_cli_takes_dashboards(tmp_path):
    out = tmp_path / "m"
    said = mosquitto_config(str(out), "plant", agents=["dev-a"], dashboard_users=["dashboard"])
    assert "(3 users" in said
    assert set(read_credentials(out / CREDENTIALS_FILE)) == {"aggregator", "dev-a", "dashboard"}
    assert "user dashboard\ntopic deny fedmq/plant/update/dashboard\n" in (
        out / "acl").read_text()
    with pytest.raises(ConfigError, match="both agent and dashboard"):
        mosquitto_config(str(out), "plant", agents=["dev-a"], dashboard_users=["dev-a"])


# --- both real brokers ----------------------------------------------------------------------

@dataclass(frozen=True)
class Running:
    """A broker enforcing ``ACL``; ``strict``: it refuses a SUBSCRIBE outside the ACL
    (amqtt) rather than granting it and delivering nothing (Mosquitto)."""

    port: int
    passwords: dict[str, str]
    strict: bool


@pytest.fixture(params=["embedded", "mosquitto"])
def dashboard_broker(request: pytest.FixtureRequest, dashboard_password_file: Path,
                     tmp_path: Path) -> Iterator[Running]:
    if request.param == "embedded":
        s = settings(dashboard_password_file, trustee_users=["trustee-1"],
                     dashboard_users=list(DASHBOARDS))
        with EmbeddedBroker(s):
            yield Running(s.port, LOGINS, strict=True)
        return
    mosquitto_binary()  # skip (or fail in CI) before writing anything
    port = free_port()
    written = write_files(tmp_path / "mosquitto", MosquittoSetup(acl=ACL, host="127.0.0.1",
                                                                 port=port))
    log = tmp_path / "mosquitto" / "mosquitto.log"
    with contextlib.ExitStack() as running:
        running.enter_context(running_mosquitto(written.conf, port, log))
        noise = [line for line in log.read_text().splitlines()
                 if any(w in line for w in ("Warning", "Error", "does not contain"))
                 and "should not be run as root" not in line]
        assert noise == []
        yield Running(port, read_credentials(written.credentials), strict=False)


@pytest.fixture
def login(dashboard_broker: Running, probe) -> Callable[..., Probe]:
    def make(user: str, client_id: str | None = None, **kw: Any) -> Probe:
        p = probe(dashboard_broker.port, client_id or f"c-{user}", username=user,
                  password=dashboard_broker.passwords[user], **kw)
        assert p.connect(), f"{user} could not connect"
        return p
    return make


def test_a_dashboard_receives_the_retained_topics_metrics_and_statuses(dashboard_broker, login):
    agg, dev_a = login("aggregator"), login("dev-a")
    agg.publish(T.pubkey, b"key", retain=True)
    agg.publish(T.round, b"round 1", retain=True)
    agg.publish(T.progress, b"2 of 2 reported", retain=True)
    dev_a.publish(T.status("dev-a"), b"online", retain=True)
    assert agg.subscribe(T.status_filter) and agg.subscribe(T.progress)
    assert agg.wait_for(T.status("dev-a"), b"online")  # retained before the dashboard comes
    assert agg.wait_for(T.progress, b"2 of 2 reported")

    dash = login("dashboard")
    for topic in READS:
        assert dash.subscribe(topic), topic
    for topic, payload in ((T.pubkey, b"key"), (T.round, b"round 1"),
                           (T.progress, b"2 of 2 reported"), (T.status("dev-a"), b"online")):
        assert dash.wait_for(topic, payload), topic
    agg.publish(T.metrics, b"loss", qos=0)
    agg.publish(T.progress, b"round 2: 0 of 2", retain=True)
    dev_a.publish(T.status("dev-a"), b"training", retain=True)
    assert dash.wait_for(T.metrics, b"loss")
    assert dash.wait_for(T.progress, b"round 2: 0 of 2")
    assert dash.wait_for(T.status("dev-a"), b"training")


def test_a_dashboard_publishes_nothing(dashboard_broker, login):
    """Not on any topic, not retained: every subscriber that would read a forgery (the
    aggregator, an agent, a trustee, another dashboard) sees only the real messages."""
    agg, dev_a, t1, wall = login("aggregator"), login("dev-a"), login("trustee-1"), login("wall")
    for topic in (T.updates_filter, T.status_filter, T.pubkey, T.round, T.progress,
                  T.trustee_replies_filter):
        assert agg.subscribe(topic), topic
    for topic in (T.pubkey, T.round, T.metrics, T.notice("dev-a")):
        assert dev_a.subscribe(topic), topic
    assert t1.subscribe(T.trustee_request) and t1.subscribe(T.updates_filter)
    for topic in READS:
        assert wall.subscribe(topic), topic

    dash = login("dashboard")
    forged = [T.round, T.pubkey, T.progress, T.metrics, T.update("dashboard"),
              T.update("dev-a"), T.status("dashboard"), T.status("dev-a"), T.notice("dev-a"),
              T.notice("dashboard"), T.trustee_request, T.trustee_reply("dashboard"),
              T.trustee_reply("trustee-1"), f"{T.base}/anything", "elsewhere"]
    for topic in forged:
        dash.publish(topic, b"forged by dashboard", retain=True)  # acknowledged, dropped
        dash.publish(topic, b"forged by dashboard")

    # Positive controls, sent after the broker acknowledged every forgery.
    agg.publish(T.round, b"round 1", retain=True)
    agg.publish(T.progress, b"progress 1", retain=True)
    agg.publish(T.metrics, b"loss", qos=0)
    agg.publish(T.notice("dev-a"), b"notice for a")
    agg.publish(T.trustee_request, b"request 1")
    dev_a.publish(T.update("dev-a"), b"update a")
    dev_a.publish(T.status("dev-a"), b"online", retain=True)
    t1.publish(T.trustee_reply("trustee-1"), b"reply 1")
    assert agg.wait_for(T.update("dev-a"), b"update a") and agg.wait_for(T.round, b"round 1")
    assert agg.wait_for(T.status("dev-a"), b"online")
    assert agg.wait_for(T.trustee_reply("trustee-1"), b"reply 1")
    assert agg.wait_for(T.progress, b"progress 1")
    assert dev_a.wait_for(T.metrics, b"loss") and dev_a.wait_for(T.notice("dev-a"), b"notice for a")
    assert t1.wait_for(T.trustee_request, b"request 1")
    assert wall.wait_for(T.progress, b"progress 1") and wall.wait_for(T.metrics, b"loss")
    assert wall.wait_for(T.status("dev-a"), b"online")
    for observer in (agg, dev_a, t1, wall):
        assert [t for t, p in observer.received if p == b"forged by dashboard"] == [], observer

    # Nothing forged was retained either: a late reader gets the real copies only.
    late = login("dashboard", client_id="late-dashboard")
    for topic in READS:
        assert late.subscribe(topic), topic
    assert late.wait_for(T.round, b"round 1") and late.wait_for(T.progress, b"progress 1")
    assert late.wait_for(T.status("dev-a"), b"online")
    agg.publish(T.round, b"round 2", retain=True)  # the late reader's positive control
    assert late.wait_for(T.round, b"round 2")
    assert [t for t, p in late.received if p == b"forged by dashboard"] == []
    assert late.got(T.status("dashboard")) == [] and late.got(T.pubkey) == []


def test_a_dashboard_reads_no_update_notice_or_trustee_topic(dashboard_broker, login):
    agg, dev_a, t1 = login("aggregator"), login("dev-a"), login("trustee-1")
    assert agg.subscribe(T.updates_filter) and agg.subscribe(T.trustee_replies_filter)
    assert dev_a.subscribe(T.notice("dev-a")) and t1.subscribe(T.trustee_request)
    dash = login("dashboard")
    for topic in (T.updates_filter, T.update("dev-a"), T.notices_filter, T.notice("dev-a"),
                  T.notice("dashboard"), T.trustee_request, T.trustee_replies_filter,
                  f"{T.base}/trustee/#", f"{T.base}/#", "#"):
        granted = dash.subscribe(topic)
        if dashboard_broker.strict:
            assert not granted, topic  # amqtt refuses; Mosquitto grants and delivers nothing
    assert dash.subscribe(T.round)

    dev_a.publish(T.update("dev-a"), b"update a")
    agg.publish(T.notice("dev-a"), b"notice for a")
    agg.publish(T.notice("dashboard"), b"notice for nobody")
    agg.publish(T.trustee_request, b"request 1")
    t1.publish(T.trustee_reply("trustee-1"), b"reply 1")
    assert agg.wait_for(T.update("dev-a"), b"update a")
    assert dev_a.wait_for(T.notice("dev-a"), b"notice for a")
    assert t1.wait_for(T.trustee_request, b"request 1")
    assert agg.wait_for(T.trustee_reply("trustee-1"), b"reply 1")
    agg.publish(T.round, b"round 1")  # the dashboard's positive control, sent last
    t1.publish(T.trustee_reply("trustee-1"), b"reply 2")
    assert agg.wait_for(T.trustee_reply("trustee-1"), b"reply 2")
    assert dash.wait_for(T.round, b"round 1")
    assert [t for t, _ in dash.received if t != T.round] == []


def test_an_agent_never_receives_progress(dashboard_broker, login):
    agg = login("aggregator")
    agg.publish(T.progress, b"dev-a, dev-b expected", retain=True)
    agg.publish(T.round, b"round 1", retain=True)
    dev_a = login("dev-a")
    for topic in (T.progress, f"{T.base}/+", f"{T.base}/#", "#"):
        granted = dev_a.subscribe(topic)
        if dashboard_broker.strict:
            assert not granted, topic
    assert dev_a.subscribe(T.round) and dev_a.wait_for(T.round, b"round 1")  # retained
    agg.publish(T.progress, b"dev-a reported", retain=True)
    agg.publish(T.round, b"round 2", retain=True)  # positive control, sent last
    assert dev_a.wait_for(T.round, b"round 2")
    assert dev_a.got(T.progress) == []
    assert agg.subscribe(T.progress) and agg.wait_for(T.progress, b"dev-a reported")
    # nor can an agent write it
    assert agg.subscribe(T.updates_filter)
    dev_a.publish(T.progress, b"forged by dev-a", retain=True)
    dev_a.publish(T.update("dev-a"), b"update a")  # positive control, sent last
    assert agg.wait_for(T.update("dev-a"), b"update a")
    assert agg.got(T.progress) == [b"dev-a reported"]
    dash = login("dashboard")
    assert dash.subscribe(T.progress) and dash.wait_for(T.progress, b"dev-a reported")
    assert dash.got(T.progress) == [b"dev-a reported"]


def test_a_dashboard_cannot_leave_a_last_will(dashboard_broker, login, probe):
    """The embedded broker refuses the CONNECT; Mosquitto takes it and drops the will.

    ``status/dashboard`` is what the agents' pattern would grant every user; ``round``
    is what a forged will could leave retained for every device."""
    agg = login("aggregator")
    assert agg.subscribe(T.status_filter) and agg.subscribe(T.round)
    for topic in (T.status("dashboard"), T.round):
        willing = probe(dashboard_broker.port, "c-willing", username="dashboard",
                        password=dashboard_broker.passwords["dashboard"], reconnect=False,
                        will=(topic, b"forged will"))
        connected = willing.connect()
        if dashboard_broker.strict:
            assert not connected, topic
        elif connected:
            willing.client.loop_stop()
            willing.client.socket().close()  # gone without a DISCONNECT: the will is due
            # Its session is gone (will sent or dropped) before this login's CONNACK:
            # closed, or taken over (Mosquitto uses the user name as the client id).
            login("dashboard", client_id="c-willing-again").close()
    dev_a = login("dev-a")
    dev_a.publish(T.status("dev-a"), b"online")  # positive control, sent last
    agg.publish(T.round, b"round 1")
    assert agg.wait_for(T.status("dev-a"), b"online") and agg.wait_for(T.round, b"round 1")
    assert [t for t, p in agg.received if p == b"forged will"] == []
