"""The page's HTTP side: files, JSON, /metrics in Prometheus' format, and the login."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedmq.dashboard.server import DashboardServer, check_password, read_users, set_password
from fedmq.protocol.errors import ConfigError

STATE = {
    "fleet": "f", "source": "live", "connected": True, "now": 1.0,
    "run": {"id": "run1", "phase": "training", "reason": "", "round": 3, "rounds": 5,
            "model_version": 2, "opened_at": 0.0, "deadline": 9.0},
    "devices": {"enrolled": 4, "online": 3, "expected": ["a", "b"], "reported": ["a"],
                "waiting": ["b"], "late": [], "skipped": {}},
    "relays": {}, "rejected": {"forged": 2},
    "rounds": [{"round": r, "phase": "training", "closed_at": 0.0, "seconds": 1.0,
                "reported": 3, "expected": 3, "rejected": 1, "update_bytes": 100,
                "model_bytes": 10, "closed_by": "all", "loss": 0.5, "epsilon": None,
                "accuracy": 0.9, "balanced_accuracy": 0.8, "r2": None, "mse": None,
                "mae": None} for r in (1, 2)],
    "privacy": {"epsilon": 1.5, "delta": 1e-5, "budget": 8.0}, "ignored": {"malformed": 1},
    "task": "classification",
}


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
