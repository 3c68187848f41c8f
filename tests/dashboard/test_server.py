"""The page's HTTP side: files, JSON, /metrics in Prometheus' format, and the login."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dashboard_support import STATE
from prometheus_client.parser import text_string_to_metric_families

from fedmq.dashboard.server import DashboardServer, check_password, read_users, set_password
from fedmq.protocol.errors import ConfigError


@pytest.fixture
def server():
    s = DashboardServer(lambda: STATE, port=0).start()
    yield s
    s.close()


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_page_state_and_files(server):
    code, headers, body = get(server.url)
    assert code == 200 and b"<html" in body.lower()
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    code, _, body = get(server.url + "uPlot.iife.min.js")
    assert code == 200 and len(body) > 20_000
    code, headers, body = get(server.url + "api/state")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == STATE
    for path in ("../pyproject.toml", "static/../view.py", "nope.js", "VENDORED.md"):
        assert get(server.url + path)[0] == 404


def test_metrics_parse_as_prometheus_text_and_follow_its_naming(server):
    code, headers, body = get(server.url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("fedmq_round", ())] == 3
    assert samples[("fedmq_updates_accepted_total", ())] == 6
    assert samples[("fedmq_updates_rejected_total", (("reason", "forged"),))] == 2
    assert samples[("fedmq_rounds_closed_total", (("phase", "training"),))] == 2
    assert samples[("fedmq_devices", (("state", "waiting"),))] == 1
    assert samples[("fedmq_fleet_accuracy", ())] == 0.9
    assert samples[("fedmq_privacy_epsilon_spent", ())] == 1.5
    assert samples[("fedmq_dashboard_messages_ignored_total", (("reason", "malformed"),))] == 1
    assert ("fedmq_build_info", ()) not in samples  # it has a version label
    assert any(name == "fedmq_build_info" for name, _ in samples)
    for name, _ in samples:
        assert name.startswith("fedmq_")
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_a_login_is_needed_when_users_are_set(tmp_path: Path):
    users = tmp_path / "users.txt"
    set_password(users, "ops", "correct horse")
    assert users.stat().st_mode & 0o777 == 0o600
    server = DashboardServer(lambda: STATE, port=0, users=read_users(str(users))).start()
    try:
        assert get(server.url)[0] == 401
        code, headers, _ = get(server.url + "api/state", ("ops", "wrong password"))
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get(server.url + "metrics", ("nobody", "correct horse"))[0] == 401
        assert get(server.url + "api/state", ("ops", "correct horse"))[0] == 200
    finally:
        server.close()


def test_users_file_mistakes_are_one_line(tmp_path: Path):
    bad = tmp_path / "users.txt"
    bad.write_text("ops:plaintext\n")
    with pytest.raises(ConfigError, match=r"users.txt:1: not a 'user:scrypt"):
        read_users(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        read_users(str(tmp_path / "missing.txt"))
    assert not check_password("scrypt$!!$!!", "x")


def test_a_busy_port_is_one_line(server):
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConfigError, match=f"cannot serve the dashboard on 127.0.0.1:{port}"):
        DashboardServer(lambda: STATE, port=port)


def test_idle_and_surplus_connections_are_closed(monkeypatch):
    import socket

    from fedmq.dashboard import server as module

    monkeypatch.setattr(module, "IDLE_SECONDS", 0.5)
    monkeypatch.setattr(module, "MAX_CONNECTIONS", 3)
    s = DashboardServer(lambda: STATE, port=0).start()
    host, port = "127.0.0.1", int(s.url.rsplit(":", 1)[1].strip("/"))
    try:
        idle = [socket.create_connection((host, port)) for _ in range(3)]
        for sock in idle:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
        extra = socket.create_connection((host, port))
        extra.settimeout(5)
        assert extra.recv(100) == b""  # over the cap: closed unanswered
        extra.close()
        for sock in idle:  # the idle ones time out
            sock.settimeout(5)
            assert sock.recv(100) == b""
            sock.close()
        assert get(s.url + "api/state")[0] == 200  # and the page answers again
    finally:
        s.close()


def test_a_checked_login_is_not_hashed_again(tmp_path: Path, monkeypatch):
    from fedmq.dashboard import server as module

    users = tmp_path / "users.txt"
    set_password(users, "ops", "correct horse")
    calls = []
    real = module.check_password
    monkeypatch.setattr(module, "check_password",
                        lambda stored, pw: calls.append(pw) or real(stored, pw))
    s = DashboardServer(lambda: STATE, port=0, users=read_users(str(users))).start()
    try:
        for _ in range(3):
            assert get(s.url + "api/state", ("ops", "correct horse"))[0] == 200
        assert get(s.url + "api/state", ("ghost", "correct horse"))[0] == 401
        assert calls == ["correct horse", "correct horse"]  # once for ops, once for the ghost
    finally:
        s.close()


def test_an_impossible_port_is_one_line():
    with pytest.raises(ConfigError, match=r"port 70000 is not in 0\.\.65535"):
        DashboardServer(lambda: STATE, port=70000)
