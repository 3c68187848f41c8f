"""The sharded simulation (--workers), its brokers (--broker) and what it reports."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import load_signer
from fedmq.simulation.broker import BrokerChoice
from fedmq.simulation.run import Simulation, SimulationOptions, options_from
from tests.mqtt_support import mosquitto_binary

SMALL = dict(agents=5, rounds=2, key_bits=512, samples_per_device=200, plot=False, seed=3)


@pytest.mark.slow
def test_sharded_fleet_equals_the_single_process_fleet(tmp_path):
    """Same seeds: the same data, training and exact encrypted sums, whichever process
    an agent runs in; every agent keeps its own identity and signing key."""
    one = Simulation(SimulationOptions(**SMALL, workers=0, out_dir=str(tmp_path / "one")),
                     progress=lambda _: None).run()
    lines: list[str] = []
    sim = Simulation(SimulationOptions(**SMALL, workers=2, connect_spread=0.5,
                                       out_dir=str(tmp_path / "two")), progress=lines.append)
    two = sim.run()
    assert np.array_equal(one.final_params, two.final_params)
    assert [(r.round_id, r.reported, r.closed_by, r.clipped, r.fleet_score) for r in one.rows] \
        == [(r.round_id, r.reported, r.closed_by, r.clipped, r.fleet_score) for r in two.rows]
    assert all(r.reported == 5 for r in two.rows)
    keys = {load_signer(two.out_dir / "agents" / d.device_id / "signing.key").public_hex
            for d in sim.devices}
    assert len(keys) == 5  # five distinct identities, each loaded by its worker
    assert any("agents in 2 worker processes" in ln for ln in lines)
    assert sim.end is not None and len(sim.end.worker_rss) == 2
    assert all(r > 10 * 2**20 for r in sim.end.worker_rss) and sim.end.broker.peak_rss > 0
    assert sim.end.broker.puback_timeouts == 0
    assert any(ln.startswith("peak RSS") for ln in lines)


@pytest.mark.slow
def test_mosquitto_runs_a_tiny_fleet_with_a_login_per_agent(tmp_path):
    mosquitto_binary()  # skip without Mosquitto (fail with FEDMQ_REQUIRE_MOSQUITTO=1)
    lines: list[str] = []
    sim = Simulation(SimulationOptions(**{**SMALL, "agents": 3, "rounds": 1}, workers=1,
                                       broker="mosquitto", out_dir=str(tmp_path)),
                     progress=lines.append)
    report = sim.run()
    assert all(r.reported == 3 for r in report.rows)
    mosq = report.out_dir / "mosquitto"
    creds = (mosq / "credentials.txt").read_text()
    assert all(f"{d.device_id}:" in creds for d in sim.devices) and "aggregator:" in creds
    assert "allow_anonymous false" in (mosq / "mosquitto.conf").read_text()
    assert any("Mosquitto on 127.0.0.1:" in ln for ln in lines)
    assert sim.end is not None and sim.end.broker.peak_rss > 0 and sim.end.broker.warnings == 0


@pytest.mark.slow
def test_a_running_broker_given_as_host_port(tmp_path):
    port = free_port()
    with EmbeddedBroker(BrokerSettings(port=port)):
        report = Simulation(SimulationOptions(**{**SMALL, "agents": 2, "rounds": 1}, workers=1,
                                              broker=f"127.0.0.1:{port}",
                                              out_dir=str(tmp_path)),
                            progress=lambda _: None).run()
    assert all(r.reported == 2 for r in report.rows)


@pytest.mark.parametrize("text, kind, port", [("embedded", "embedded", 0),
                                              ("mosquitto", "mosquitto", 0),
                                              ("127.0.0.1:1884", "external", 1884)])
def test_broker_choice(text, kind, port):
    choice = BrokerChoice.parse(text)
    assert (choice.kind, choice.port) == (kind, port)


@pytest.mark.parametrize("text", ["emqx", "127.0.0.1", "127.0.0.1:0", ":1883", "h:99999"])
def test_a_bad_broker_is_one_line(text):
    with pytest.raises(ConfigError, match="--broker: expected embedded, mosquitto or HOST:PORT"):
        SimulationOptions(broker=text)


def test_workers_default_to_the_cpus_on_the_command_line_and_are_checked():
    assert options_from(None, {}).workers == (os.cpu_count() or 1)
    assert options_from(None, {"workers": 0}).workers == 0
    assert SimulationOptions().workers == 0  # the API keeps agents inspectable
    with pytest.raises(ConfigError, match="--workers"):
        options_from(None, {"workers": -1})
    assert SimulationOptions(agents=400).spread == pytest.approx(2.0)
    assert SimulationOptions(agents=400, connect_spread=0).spread == 0


@pytest.mark.slow
def test_sigterm_stops_the_mosquitto_the_simulation_started(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from support import wait_until

    mosquitto_binary()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmq", "simulate", "--agents", "3", "--rounds", "200",
         "--key-bits", "512", "--workers", "1", "--broker", "mosquitto", "--no-plot",
         "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def mosquitto_pid() -> int | None:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        return next((int(c) for c in children
                     if "mosquitto" in Path(f"/proc/{c}/comm").read_text()), None)

    try:
        pid = wait_until(mosquitto_pid, "the simulation to start Mosquitto", timeout=60)
        wait_until(lambda: (tmp_path / "latest" / "metrics.csv").exists()
                   or list(tmp_path.glob("*/aggregator/*")), "the run to start", timeout=60)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 130, out
        assert "interrupted" in out
        wait_until(lambda: not Path(f"/proc/{pid}").exists()
                   or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                   "Mosquitto to be stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_simulated_agents_wait_and_keep_alive_for_the_fleet_size():
    from fedmq.runtime.transport import MqttSettings
    from fedmq.simulation.broker import for_fleet, memory_limit

    small, large = for_fleet(MqttSettings(), 20), for_fleet(MqttSettings(), 1000)
    assert (small.connect_timeout, small.keepalive) == (10.0, 30)  # a device's defaults
    assert large.connect_timeout >= 40 and large.keepalive >= 120
    assert memory_limit(20) == 512 * 2**20 and memory_limit(1000) >= 1000 * 2**20


def test_a_fleet_above_a_thousand_fits_in_one_round(tmp_path):
    from fedmq.protocol.topics import Topics
    from fedmq.runtime.transport import MqttSettings
    from fedmq.simulation.rundirs import start_run

    sim = Simulation(SimulationOptions(**{**SMALL, "agents": 1500}, workers=0,
                                       out_dir=str(tmp_path)), progress=lambda _: None)
    run, _ = start_run(tmp_path, reuse_key=False)
    sim.out_dir = run.run_dir
    aggregator = sim._aggregator(run, Topics("sim"), MqttSettings())
    # the codec's default of 1,000 refused 4,000 of 5,000 agents' updates every round
    assert aggregator.config.codec.max_agents >= 1500
    # and so must the statistics round's sums (5,000 agents: its sums were rejected)
    assert aggregator.config.statistics.max_agents >= 1500
