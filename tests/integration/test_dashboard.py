"""The dashboard on a real fleet: embedded broker, aggregator, agents, headless Chromium.

The live page follows the rounds as they close and ends with as many loss points as the
run's rounds.csv has fleet losses; /metrics counts what rounds.csv says; the page of
the finished run (--run DIR) shows the same; ``fedmq status`` says where a run stands
and exits non-zero when it failed or nothing answers.
"""

from __future__ import annotations

import csv
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from browser_support import open_page
from mqtt_support import Probe
from prometheus_client.parser import text_string_to_metric_families
from support import AGGREGATOR_SIGNER, announcement, run_in_thread

from fedmq.cli import main
from fedmq.dashboard.config import DashboardConfig
from fedmq.dashboard.rundir import load_run
from fedmq.dashboard.server import DashboardServer
from fedmq.dashboard.service import Dashboard, served_state, status_lines
from fedmq.dashboard.view import FleetView
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings

pytestmark = pytest.mark.slow
# Screenshots of the pages, kept after the run (CI keeps build/ as its artifacts).
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def rounds_csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "rounds.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_live_page_follows_a_run_and_matches_its_round_log(
        broker_port, make_aggregator, start_agents):
    # Each closed round holds the aggregator for 1.5 s: the page (it polls once a second)
    # must see the round number change, not only the end. The aggregator's own view (its
    # [metrics] endpoint) folds what it publishes; the dashboard's, what the broker delivers.
    own = FleetView.for_fleet(Topics("test"), AGGREGATOR_SIGNER.public_hex)
    aggregator = make_aggregator(broker_port, rounds=5, quorum=3, min_agents=3,
                                 on_round=lambda _result: time.sleep(1.5), tap=own.observe)
    dashboard = Dashboard(DashboardConfig(
        topics=aggregator.config.topics, aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
        mqtt=MqttSettings(port=broker_port), port=0))
    server = dashboard.serve()
    stop = threading.Event()
    serving = threading.Thread(target=dashboard.run, args=(stop,), daemon=True)
    serving.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with open_page(server.url, screenshot=ARTIFACTS / "dashboard-live.png") as page:
            page.wait_ready()
            start_agents(broker_port, 3)
            thread, out = run_in_thread(aggregator.run)
            seen: list[int] = []
            while thread.is_alive():
                if page.body("round"):
                    seen.append(int(page.body("round")))
                time.sleep(0.2)
            assert "error" not in out, out.get("error")
            assert len(set(seen)) >= 2 and seen == sorted(seen), seen  # it advanced
            log = rounds_csv(aggregator.store.run_dir)
            with_loss = [r for r in log if r["fleet_loss"]]
            page.wait_for(lambda: page.body("phase") == "finished", timeout=15,
                          what="the finished run")
            page.wait_for(lambda: page.points("chart-loss") == len(with_loss), timeout=10,
                          what=f"{len(with_loss)} loss points")
            assert int(page.body("rounds")) == len(log)
        metrics = scrape(server.url)
        lines, code = status_lines(dashboard.state())
        # fedmq status asks the dashboard that serves (no second connection of its login).
        port = int(server.url.rsplit(":", 1)[1].strip("/"))
        served = served_state(replace(dashboard.config, port=port))
        assert served is not None and served["run"] == dashboard.state()["run"]
    finally:
        stop.set()
        serving.join(10)
    training = [r for r in log if r["phase"] == "training"]
    assert len(training) == 5
    assert metrics[("fedmq_rounds_closed_total", (("phase", "training"),))] == 5
    assert metrics[("fedmq_updates_accepted_total", ())] == sum(int(r["reported"]) for r in log)
    rejected = sum(v for (name, _), v in metrics.items() if name == "fedmq_updates_rejected_total")
    assert rejected == sum(int(r["rejected"]) for r in log)
    assert metrics[("fedmq_fleet_loss", ())] == pytest.approx(
        float(with_loss[-1]["fleet_loss"]), rel=1e-5)
    assert code == 0 and lines[0].endswith(": finished"), lines
    # The aggregator's own endpoint says the same as the dashboard across the broker.
    mine, theirs = own.state(), dashboard.view.state()
    assert mine["rounds"] == theirs["rounds"] and mine["run"] == theirs["run"]
    assert own.ignored == {} and dashboard.view.ignored == {}

    # The same run from its directory, as fedmq dashboard --run DIR shows it.
    run_server = DashboardServer(load_run(aggregator.store.run_dir).state, port=0).start()
    try:
        with open_page(run_server.url, screenshot=ARTIFACTS / "dashboard-run.png") as page:
            page.wait_ready()
            assert page.body("phase") == "finished"
            assert page.points("chart-loss") == len(with_loss)
            assert int(page.body("rounds")) == len(log)
    finally:
        run_server.close()


def write_config(tmp_path: Path, port: int, fleet: str = "f") -> Path:
    path = tmp_path / "dashboard.toml"
    path.write_text(f'[fleet]\nname = "{fleet}"\naggregator_signing_key = '
                    f'"{AGGREGATOR_SIGNER.public_hex}"\n[mqtt]\nport = {port}\n'
                    'connect_attempts = 1\n')
    return path


def publish_round(port: int, reason: str = "", **kw) -> None:
    probe = Probe(port, "publisher")
    assert probe.connect()
    # A round the aggregator runs now: its deadline ahead (a long-gone one means nobody does).
    message = replace(announcement(**kw), reason=reason, deadline=time.time() + 60)
    probe.publish(Topics("f").round, message.to_bytes(AGGREGATOR_SIGNER), retain=True)
    time.sleep(0.3)
    probe.close()


def test_fedmq_status_exit_codes(broker_port, tmp_path, capsys):
    config = write_config(tmp_path, broker_port)
    assert main(["status", "--config", str(config), "--wait", "1"]) == 2
    assert "no run announced" in capsys.readouterr().out
    publish_round(broker_port, round_id=3, run_id="run1", issued_at=time.time())
    assert main(["status", "--config", str(config), "--wait", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fleet f, run run1: training") and "round 3" in out
    publish_round(broker_port, round_id=3, run_id="run1", issued_at=time.time(),
                  state="failed", reason="quorum 3 not reached after 2 extensions")
    assert main(["status", "--config", str(config), "--wait", "1"]) == 1
    assert "failed (quorum 3 not reached after 2 extensions)" in capsys.readouterr().out


def test_fedmq_status_without_a_broker_is_one_line(tmp_path, capsys):
    from fedmq.broker.embedded import free_port
    config = write_config(tmp_path, free_port())
    assert main(["status", "--config", str(config), "--wait", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedmq status: ")
