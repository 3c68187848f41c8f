"""fedmq init gateway / init device: the configs load, the certificate verifies, a fleet runs."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import ipaddress
import json
import shutil
import socket
import ssl
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from mqtt_support import Probe
from support import fedmq_process, wait_until

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.keys import load_aggregator_keys
from fedmq.broker.cli import load_settings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.cli import main
from fedmq.edge_agent.config import AgentConfig
from fedmq.models import load_model, make_model
from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.server import ServerSettings
from fedmq.runtime.config import load_toml
from fedmq.simulation import synthetic


def init(tmp_path: Path, *extra: str, devices: str = "dev-a,dev-b", port: int = 8883) -> Path:
    gw = tmp_path / "gw"
    assert main(["init", "gateway", str(gw), "--fleet", "plant", "--bits", "1024", "--rounds",
                 "2", "--port", str(port), "--devices", devices, *extra]) == 0
    return gw


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def give_data(gw: Path, devices: list[str]) -> None:
    paths = synthetic.write_fleet(synthetic.FleetSpec(n_devices=len(devices),
                                                      samples_per_device=80), gw / "data")
    for device, path in zip(devices, paths, strict=True):
        shutil.copy(path, gw / "devices" / device / "data.csv")


def test_gateway_configs_load_with_the_role_configs(tmp_path: Path) -> None:
    gw = init(tmp_path, "--san", "IP:10.1.2.3", "--san", "DNS:gw.local")
    broker = load_settings(gw / "broker.toml")
    assert (broker.acl, broker.allow_anonymous, broker.fleet) == (True, False, "plant")
    assert broker.host == "0.0.0.0" and broker.tls_cert_file and broker.password_file
    users = [ln.split(":", 1)[0] for ln in (gw / "passwords.txt").read_text().splitlines()]
    assert users == ["aggregator", "dashboard", "dev-a", "dev-b"]
    assert broker.dashboard_users == ("dashboard",)
    assert broker.fleet_acl().agents == ("dev-a", "dev-b")  # the dashboard is no agent
    agg = AggregatorConfig.from_file(gw / "aggregator.toml")
    assert agg.mqtt.tls and agg.mqtt.username == "aggregator"
    # The [server] table is there to be edited: FedAdam at 0.2, from bench-noniid.
    assert agg.server == ServerSettings(optimizer="fedadam", server_lr=0.2)
    assert agg.mqtt.password == (gw / "aggregator.password").read_text().strip()
    (public, _), signer = load_aggregator_keys(agg)
    give_data(gw, ["dev-a", "dev-b"])
    for device in ("dev-a", "dev-b"):
        bundle = gw / "devices" / device
        agent = AgentConfig.from_file(bundle / "agent.toml")
        assert (agent.agent_id, agent.mqtt.username, agent.mqtt.host) == (device, device,
                                                                           "10.1.2.3")
        assert agent.mqtt.tls and Path(agent.mqtt.ca_file or "") == bundle / "ca.crt"
        assert agent.mqtt.password == (bundle / "mqtt.password").read_text().strip()
        assert agent.key_fingerprint == fingerprint(public)
        assert agent.aggregator_signing_key == signer.public_hex
        assert mode(bundle / "mqtt.password") == 0o600
        assert not (bundle / "state").exists()  # the device makes its own signing key
        # The device's own DP limits are on: twice the fleet's 2 devices for the quorum.
        assert (agent.max_epsilon, agent.max_quorum) == (10.0, 4)
    for secret in ("tls/ca.key", "tls/server.key", "passwords.txt", "aggregator.password",
                   "dashboard.password", "state/paillier.key", "state/signing.key"):
        assert mode(gw / secret) == 0o600, secret
    cert = x509.load_pem_x509_certificate((gw / "tls" / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "gw.local"}


@pytest.mark.parametrize(("kind", "label", "server"), [
    ("logistic", "0 1 1 0 1 0", ServerSettings(optimizer="fedadam", server_lr=0.2)),
    ("linear", "0.5 1.25 3.0 2.5 0.75 4.0",
     ServerSettings(optimizer="fedavgm", server_lr=1.0, momentum=0.7)),
])
def test_init_gateway_writes_the_benchmarks_server_step_per_model_kind(
        tmp_path: Path, kind: str, label: str, server: ServerSettings) -> None:
    """bench-noniid's most robust step: FedAdam at 0.2 for a classifier, FedAvgM at
    momentum 0.7 for a regression (where FedAdam was worse than FedAvg)."""
    sample = tmp_path / "sample.csv"
    rows = [f"{i},{2 * i + 1},{y}" for i, y in enumerate(label.split())]
    sample.write_text("\n".join(["temp,load,y", *rows]) + "\n")
    gw = init(tmp_path, "--data-sample", str(sample), "--label", "y", "--kind", kind)
    agg = AggregatorConfig.from_file(gw / "aggregator.toml")
    assert agg.spec.kind == kind and agg.server == server
    text = (gw / "aggregator.toml").read_text()
    assert text.count("optimizer = ") == 1 and "docs/benchmarks.md" in text
    # The code's default is still plain FedAvg: a config without [server] keeps it.
    start = text.index("\n[server]\n")
    without = text[:start + 1] + text[text.index("[codec]"):]
    (gw / "aggregator.toml").write_text(without)
    assert AggregatorConfig.from_file(gw / "aggregator.toml").server == ServerSettings()


def test_init_gateway_makes_a_read_only_dashboard_login(tmp_path: Path, capsys) -> None:
    gw = init(tmp_path, "--san", "IP:10.1.2.3")
    out = capsys.readouterr().out
    assert "dashboard.toml (read-only login 'dashboard')" in out
    doc, aggregator = load_toml(gw / "dashboard.toml"), load_toml(gw / "aggregator.toml")
    assert set(doc) == {"dashboard", "fleet", "mqtt"}
    assert doc["dashboard"] == {"bind": "127.0.0.1", "port": 8780}  # users_file: commented
    (_, _), signer = load_aggregator_keys(AggregatorConfig.from_file(gw / "aggregator.toml"))
    assert doc["fleet"] == {"name": "plant", "topic_prefix": "fedmq",
                            "aggregator_signing_key": signer.public_hex}
    assert doc["fleet"]["name"] == aggregator["fleet"]["name"]
    assert doc["mqtt"] == {**aggregator["mqtt"], "username": "dashboard",
                           "password_file": "dashboard.password"}
    assert doc["mqtt"] == {"host": "127.0.0.1", "port": 8883, "username": "dashboard",
                           "password_file": "dashboard.password", "tls": True,
                           "ca_file": "tls/ca.crt"}
    assert (gw / doc["mqtt"]["ca_file"]).is_file()
    assert mode(gw / "dashboard.password") == 0o600
    assert len((gw / "dashboard.password").read_text().strip()) >= 16
    users = [ln.split(":", 1)[0] for ln in (gw / "passwords.txt").read_text().splitlines()]
    assert "dashboard" in users
    broker = load_settings(gw / "broker.toml")
    assert broker.dashboard_users == ("dashboard",)
    acl = broker.fleet_acl()
    assert acl is not None and acl.agents == ("dev-a", "dev-b")
    assert acl.publish_lists()["dashboard"] == []
    # and the dashboard's own loader takes it as written
    loader = pytest.importorskip("fedmq.dashboard.config")
    config = loader.DashboardConfig.from_file(gw / "dashboard.toml")
    assert (config.mqtt.username, config.mqtt.host, config.mqtt.port) == (
        "dashboard", "127.0.0.1", 8883)
    assert config.mqtt.password == (gw / "dashboard.password").read_text().strip()
    assert config.mqtt.tls and Path(config.mqtt.ca_file or "") == gw / "tls" / "ca.crt"
    assert config.aggregator_signing_key == signer.public_hex
    assert config.topics.progress == "fedmq/plant/progress"


def test_the_dashboard_login_reads_but_writes_nothing_on_the_gateways_broker(
        tmp_path: Path) -> None:
    gw = init(tmp_path, "--loopback")
    settings = dataclasses.replace(load_settings(gw / "broker.toml"), port=free_port())
    doc = load_toml(gw / "dashboard.toml")["mqtt"]
    tls = {"ca_certs": str(gw / doc["ca_file"])}
    with EmbeddedBroker(settings), contextlib.ExitStack() as probes:
        agg = Probe(settings.port, "aggregator", username="aggregator", tls=tls,
                    password=(gw / "aggregator.password").read_text().strip())
        dash = Probe(settings.port, "dashboard", username=doc["username"], tls=tls,
                     password=(gw / doc["password_file"]).read_text().strip())
        probes.callback(agg.close)
        probes.callback(dash.close)
        assert agg.connect() and dash.connect()
        assert agg.subscribe("fedmq/plant/round")
        for topic in ("fedmq/plant/round", "fedmq/plant/progress", "fedmq/plant/status/+",
                      "fedmq/plant/metrics", "fedmq/plant/pubkey"):
            assert dash.subscribe(topic), topic
        for topic in ("fedmq/plant/update/+", "fedmq/plant/notice/+", "fedmq/plant/#"):
            assert not dash.subscribe(topic), topic
        dash.publish("fedmq/plant/round", b"forged", retain=True)
        agg.publish("fedmq/plant/progress", b"progress", retain=True)
        agg.publish("fedmq/plant/round", b"round 1", retain=True)
        assert dash.wait_for("fedmq/plant/round", b"round 1")
        assert dash.wait_for("fedmq/plant/progress", b"progress")
        assert agg.wait_for("fedmq/plant/round", b"round 1")
        assert agg.got("fedmq/plant/round") == [b"round 1"]  # the forgery went nowhere
        assert dash.got("fedmq/plant/round") == [b"round 1"]


@pytest.mark.parametrize("command", [
    ["init", "device", "dashboard"], ["init", "device", "aggregator"]])
def test_the_gateways_own_logins_are_no_device_ids(tmp_path: Path, capsys, command) -> None:
    gw = init(tmp_path, devices="dev-a")
    before = (gw / "passwords.txt").read_bytes()
    assert main([*command, "--gateway", str(gw)]) == 2
    err = capsys.readouterr().err
    assert f"{command[-1]!r} is the {command[-1]}'s login, not a device id" in err
    assert (gw / "passwords.txt").read_bytes() == before
    assert not (gw / "devices" / command[-1]).exists()


def test_init_gateway_does_not_overwrite_a_dashboard_config(tmp_path: Path, capsys) -> None:
    gw = tmp_path / "gw"
    gw.mkdir()
    (gw / "dashboard.toml").write_text("# mine\n")
    assert main(["init", "gateway", str(gw), "--bits", "512"]) == 2
    assert "dashboard.toml exists" in capsys.readouterr().err
    assert (gw / "dashboard.toml").read_text() == "# mine\n"
    assert not (gw / "passwords.txt").exists()


def test_certificate_verifies_against_the_embedded_broker(tmp_path: Path) -> None:
    gw = init(tmp_path, "--san", "DNS:gw.local", "--loopback")
    settings = dataclasses.replace(load_settings(gw / "broker.toml"), port=free_port())
    assert settings.host == "127.0.0.1"
    context = ssl.create_default_context(cafile=str(gw / "tls" / "ca.crt"))
    with EmbeddedBroker(settings):
        for name in ("127.0.0.1", "localhost", "gw.local"):  # every SAN, always on 127.0.0.1
            with socket.create_connection(("127.0.0.1", settings.port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with socket.create_connection(("127.0.0.1", settings.port), timeout=5) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="not-in-the-cert.example")


def test_init_device_adds_a_login_and_a_bundle(tmp_path: Path, capsys) -> None:
    gw = init(tmp_path, devices="dev-a")
    assert main(["init", "device", "dev-c", "--gateway", str(gw)]) == 0
    assert "restart the broker" in capsys.readouterr().out
    users = [ln.split(":", 1)[0] for ln in (gw / "passwords.txt").read_text().splitlines()]
    assert users == ["aggregator", "dashboard", "dev-a", "dev-c"]
    first = (gw / "devices" / "dev-a" / "agent.toml").read_text()
    later = (gw / "devices" / "dev-c" / "agent.toml").read_text()
    assert first.replace("dev-a", "dev-c") == later  # same pins, host, port and CA
    assert main(["init", "device", "dev-c", "--gateway", str(gw)]) == 2
    assert "already provisioned" in capsys.readouterr().err


def test_a_gateway_record_from_before_max_quorum_sizes_it_from_the_bundles(
        tmp_path: Path) -> None:
    gw = init(tmp_path, devices="dev-a,dev-b,dev-c")
    record = json.loads((gw / "gateway.json").read_text())
    assert record.pop("max_quorum") == 6
    (gw / "gateway.json").write_text(json.dumps(record))
    assert main(["init", "device", "dev-d", "--gateway", str(gw)]) == 0
    assert AgentConfig.from_file(gw / "devices" / "dev-d" / "agent.toml").max_quorum == 8


def test_init_gateway_says_when_its_port_is_taken(tmp_path: Path, capsys) -> None:
    """Another broker on the port: the try-out's broker cannot start and the agents retry
    that broker's TLS for ever, so init says so at once."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        init(tmp_path, "--loopback", port=taken)
        out = capsys.readouterr().out
    assert f"note: 127.0.0.1:{taken} is in use now" in out and "--port" in out
    init(tmp_path / "free", "--loopback", port=taken)  # closed now: no note
    assert "in use" not in capsys.readouterr().out


@pytest.mark.parametrize("args, says", [
    (["--label", "y"], "init gateway: --label goes with --data-sample FILE.csv"),
    (["--label", "y", "--kind", "linear"], "--label, --kind go with --data-sample"),
    (["--san", "IP:300.1.1.1"], "--san IP:300.1.1.1: '300.1.1.1' is not an IP address"),
    (["--san", "gw.local"], "expected IP:<address> or DNS:<name>"),
    (["--devices", "dev-a,dev-a"], "names a device twice"),
    (["--devices", "bad id"], "device id"),
    (["--devices", "dev-a,dashboard"], "'dashboard' is the dashboard's login, not a device id"),
    (["--port", "0"], "--port 0 is not in 1..65535"),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path: Path, capsys, args, says) -> None:
    assert main(["init", "gateway", str(tmp_path / "gw"), *args]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "gw").exists()


def test_a_data_sample_without_the_label_column_is_one_line(tmp_path: Path, capsys) -> None:
    sample = tmp_path / "readings.csv"
    sample.write_text("timestamp,temp,rpm\n2024-05-01T00:00,20.5,1500\n")
    assert main(["init", "gateway", str(tmp_path / "gw"), "--data-sample", str(sample),
                 "--label", "fault"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no column 'fault' (--label)" in err
    assert "its columns: 'timestamp', 'temp', 'rpm'" in err
    assert not (tmp_path / "gw").exists()


def test_init_device_takes_the_gateways_columns_and_checks_its_record(tmp_path: Path,
                                                                      capsys) -> None:
    sample = tmp_path / "readings.csv"
    sample.write_text("temp,rpm,state\n20.5,1500,0\n21.0,1490,2\n")
    gw = tmp_path / "gw"
    assert main(["init", "gateway", str(gw), "--bits", "512", "--devices", "dev-a",
                 "--data-sample", str(sample), "--label", "state"]) == 0
    assert main(["init", "device", "dev-b", "--gateway", str(gw), "--data-sample",
                 str(sample), "--label", "state"]) == 2
    assert "init device takes the gateway's columns" in capsys.readouterr().err
    assert main(["init", "device", "dev-b", "--gateway", str(gw)]) == 0
    agent = AgentConfig.from_file(gw / "devices" / "dev-b" / "agent.toml")
    assert (agent.features, agent.label) == (("temp", "rpm"), "state")
    record = json.loads((gw / "gateway.json").read_text())
    (gw / "gateway.json").write_text(json.dumps({**record, "features": "abc", "label": 5}))
    capsys.readouterr()
    assert main(["init", "device", "dev-c", "--gateway", str(gw)]) == 2
    err = capsys.readouterr().err
    assert "gateway.json: not a fedmq gateway record" in err and err.count("\n") == 1


def test_init_gateway_never_overwrites_a_gateway(tmp_path: Path, capsys) -> None:
    gw = init(tmp_path)
    before = (gw / "passwords.txt").read_bytes()
    assert main(["init", "gateway", str(gw)]) == 2
    assert "init device" in capsys.readouterr().err
    assert (gw / "passwords.txt").read_bytes() == before


def run_fleet(gw: Path, devices: list[str], tmp_path: Path) -> str:
    """Device keys (--csv) -> enroll --from-file -> every round over TLS+logins+ACL; the
    aggregator's log."""
    keys = tmp_path / "keys.csv"
    for device in devices:  # on each device: make its key, print id,public_key
        proc = fedmq_process("agent", "--config", str(gw / "devices" / device / "agent.toml"),
                             "--show-public-key", "--csv", log=tmp_path / "keys.log")
        assert proc.wait(timeout=60) == 0
    lines = [ln for ln in (tmp_path / "keys.log").read_text().splitlines()
             if ln.startswith(tuple(f"{d}," for d in devices))]  # not the key-made INFO lines
    keys.write_text("\n".join(lines) + "\n")
    assert main(["enroll", "--config", str(gw / "aggregator.toml"), "--from-file", str(keys)]) == 0
    allow = json.loads((gw / "state" / "allow_list.json").read_text())["agents"]
    assert sorted(allow) == sorted(devices)
    with EmbeddedBroker(load_settings(gw / "broker.toml")):
        agents = [fedmq_process("agent", "--config", str(gw / "devices" / d / "agent.toml"),
                                log=tmp_path / f"{d}.log") for d in devices]
        aggregator = fedmq_process("aggregator", "--config", str(gw / "aggregator.toml"),
                                   log=tmp_path / "aggregator.log")
        try:
            assert aggregator.wait(timeout=120) == 0, (tmp_path / "aggregator.log").read_text()
            for d, agent in zip(devices, agents, strict=True):
                assert agent.wait(timeout=30) == 0, (tmp_path / f"{d}.log").read_text()
        finally:
            for p in (*agents, aggregator):
                if p.poll() is None:
                    p.kill()
    for d in devices:
        wait_until(lambda d=d: (gw / "devices" / d / "state" / "final_model.npz").exists(),
                   f"{d}'s final model")
    return (tmp_path / "aggregator.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("dp", [False, True])
def test_a_provisioned_fleet_completes_its_rounds_over_tls(tmp_path: Path, dp: bool) -> None:
    """With DP turned on in aggregator.toml only, the devices' written limits (max_epsilon
    10, max_quorum 4) admit the gateway's terms (epsilon 8, quorum 1)."""
    devices = ["dev-a", "dev-b"]
    gw = init(tmp_path, devices=",".join(devices), port=free_port())
    if dp:
        toml = gw / "aggregator.toml"
        toml.write_text(toml.read_text().replace("# epsilon = 3.0", "epsilon = 8.0").replace(
            "exact_aggregates = false", "exact_aggregates = true"))
    give_data(gw, devices)
    log = run_fleet(gw, devices, tmp_path)
    assert "round 2 closed" in log and "2/2 agents" in log
    assert ("privacy: epsilon" in log) == dp
    for device in devices:
        ledger = gw / "devices" / device / "state" / "privacy_ledger.json"
        assert ledger.exists() == dp
        assert "WARNING" not in (tmp_path / f"{device}.log").read_text()


def write_wine(path: Path, rows: slice) -> None:
    """scikit-learn's wine (13 raw features, 3 classes) with a timestamp column first and
    the label in the middle: a CSV no one here shaped for fedmq."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    names = [*wine.feature_names[:6], "cultivar", *wine.feature_names[6:]]
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", *names])
        for i in range(len(wine.target))[rows]:
            x = [f"{v:g}" for v in wine.data[i]]
            out.writerow([f"2024-05-01T{i % 24:02d}:00:00", *x[:6], wine.target[i], *x[6:]])


@pytest.mark.slow
def test_a_fleet_from_a_data_sample_trains_without_editing_a_config(tmp_path: Path,
                                                                     capsys) -> None:
    """init gateway --data-sample writes the features and label into every config: the
    devices' own CSVs (any columns, any order) train a model that beats the majority class."""
    from sklearn.datasets import load_wine

    devices = ["dev-a", "dev-b", "dev-c"]
    sample = tmp_path / "sample.csv"
    write_wine(sample, slice(0, None, 9))  # 20 rows of every class
    gw = tmp_path / "gw"
    assert main(["init", "gateway", str(gw), "--bits", "1024", "--rounds", "5", "--port",
                 str(free_port()), "--devices", ",".join(devices), "--data-sample", str(sample),
                 "--label", "cultivar"]) == 0
    out = capsys.readouterr().out
    assert "logistic regression over 3 classes (0..2) of 'cultivar' from 13 features" in out
    assert "not a feature: 'timestamp'" in out
    order = np.random.default_rng(7).permutation(178)
    write_wine(tmp_path / "all.csv", slice(None))
    rows = (tmp_path / "all.csv").read_text().splitlines()
    for i, device in enumerate(devices):  # non-IID enough: sorted by class within devices
        mine = sorted(order[i::3])
        (gw / "devices" / device / "data.csv").write_text(
            "\n".join([rows[0], *(rows[1 + j] for j in mine)]) + "\n")
    agg = AggregatorConfig.from_file(gw / "aggregator.toml")
    assert agg.spec.features == tuple(load_wine().feature_names)
    assert (agg.spec.kind, agg.spec.n_classes) == ("logistic", 3)
    log = run_fleet(gw, devices, tmp_path)
    assert "round 5 closed" in log
    spec, params, _ = load_model(gw / "devices" / "dev-a" / "state" / "final_model.npz")
    model = make_model(spec).set_params_vector(params)
    wine = load_wine()
    accuracy = float(np.mean(model.predict(wine.data) == wine.target))
    assert accuracy > 0.85, accuracy  # majority class: 0.40
