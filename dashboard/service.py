"""``fedmq dashboard`` and ``fedmq status``: a read-only MQTT client folding the fleet's
topics into a view, served as a page and /metrics, or printed once."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from fedmq.dashboard.config import DashboardConfig
from fedmq.dashboard.view import FleetView
from fedmq.runtime.transport import MqttLink

if TYPE_CHECKING:
    from fedmq.dashboard.server import DashboardServer

log = logging.getLogger("fedmq.dashboard")

STALE_SECONDS = 120.0  # after the open round's deadline: no aggregator runs it any more


class Dashboard:
    """Subscribes as the dashboard's read-only login; everything it hears goes to ``view``."""

    def __init__(self, config: DashboardConfig, *, view: FleetView | None = None,
                 client_id: str | None = None) -> None:
        self.config = config
        self.view = view or FleetView.for_fleet(config.topics, config.aggregator_signing_key)
        t = config.topics
        self._link = MqttLink(
            config.mqtt, client_id=client_id or config.client_id, on_message=self._on_message,
            subscriptions=[(t.pubkey, 1), (t.round, 1), (t.progress, 1), (t.metrics, 0),
                           (t.status_filter, 1)])
        self.server: DashboardServer | None = None

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.view.apply(topic, payload)  # paho's thread: fold and return, never raise

    def state(self) -> dict[str, Any]:
        self.view.connected = self._link.connected
        return self.view.state()

    def serve(self) -> DashboardServer:
        """Start the page (its own thread); ``run`` feeds it."""
        # Here, not at the top: fedmq status needs no HTTP server or prometheus-client.
        from fedmq.dashboard.server import DashboardServer, read_users

        users = read_users(self.config.users_file) if self.config.users_file else None
        self.server = DashboardServer(self.state, bind=self.config.bind,
                                      port=self.config.port, users=users).start()
        return self.server

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop``; the MQTT link reconnects on its own."""
        server = self.server or self.serve()
        log.info("dashboard of fleet %s on %s (metrics: %smetrics)", self.config.topics.fleet,
                 server.url, server.url)
        try:
            if self._link.connect_retrying(stop):
                stop.wait()
        finally:
            self._link.close()
            server.close()

    def snapshot(self, wait: float) -> dict[str, Any]:
        """Connect, let the retained messages arrive for up to ``wait`` s, and disconnect."""
        self._link.connect()
        try:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                state = self.view.state()
                run = state["run"]
                # The retained round came, and the retained metrics or the open round's progress.
                if run["id"] and (state["rounds"] or state["devices"]["expected"]):
                    time.sleep(0.2)  # the other retained topics of the same subscribe
                    break
                time.sleep(0.1)
            return self.state()
        finally:
            self._link.close()


def served_state(config: DashboardConfig, timeout: float = 2.0) -> dict[str, Any] | None:
    """The state a dashboard already serves on this config's address, or None.

    ``fedmq status`` asks it first: a second MQTT connection with the dashboard's login
    would take over the dashboard's own where the broker binds client ids to user names
    (Mosquitto's use_username_as_clientid). A page behind a login is not asked.
    """
    if config.users_file is not None:
        return None
    host = "127.0.0.1" if config.bind in ("0.0.0.0", "::", "localhost") else config.bind
    shown = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{shown}:{config.port}/api/state",
                                    timeout=timeout) as response:
            state = json.loads(response.read())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("fleet") != config.topics.fleet \
            or state.get("source") != "live" or not state.get("connected"):
        return None
    return state


def status_lines(state: dict[str, Any]) -> tuple[list[str], int]:
    """``fedmq status``'s text and exit code: 0 running or finished, 1 failed, 2 no run."""
    run, devices = state["run"], state["devices"]
    if not run["id"]:
        forged = state["ignored"].get("forged", 0)
        if forged:
            return [f"fleet {state['fleet']}: {forged} message(s) on the fleet's topics failed "
                    "the signature check: is [fleet] aggregator_signing_key the aggregator's "
                    "key?"], 2
        if state.get("key"):
            # Announced at start, before the first round: the aggregator waits for devices.
            key = state["key"]["fingerprint"][:16]
            return [f"fleet {state['fleet']}: the aggregator's key {key}... is announced, no "
                    "round yet (it waits for enough devices online: see its log)"], 0
        return [f"fleet {state['fleet']}: no run announced (no aggregator has published a "
                "round on this broker)"], 2
    lines = [f"fleet {state['fleet']}, run {run['id']}: {run['phase']}"
             + (f" ({run['reason']})" if run["reason"] else "")]
    code = 1 if run["phase"] == "failed" else 0
    if run["phase"] in ("statistics", "training", "evaluation"):
        what = {"statistics": "statistics round (before round 1)",
                "evaluation": "final evaluation of the last model"}.get(
            run["phase"], f"round {run['round']}"
            + (f" of {run['rounds']}" if run["rounds"] else "") + " (training)")
        left = ""
        if run["deadline"] is not None:
            overdue = state["now"] - run["deadline"]
            left = f", deadline in {-overdue:.0f} s" if overdue <= 0 else \
                f", deadline passed {overdue:.0f} s ago"
            if overdue > STALE_SECONDS:
                # The aggregator re-announces the round when it extends it, and closes it
                # at once after: a deadline long gone means nobody runs the round.
                left += " and nothing was announced since: is the aggregator running?"
                code = 2
        lines.append(f"  {what}, model version {run['model_version']}{left}")
        enrolled = "?" if devices["enrolled"] is None else devices["enrolled"]
        lines.append(f"  devices: {enrolled} enrolled, {devices['online']} online, "
                     f"{len(devices['reported'])}/{len(devices['expected'])} reported")
        for what in ("waiting", "late"):
            if devices[what]:
                lines.append(f"  {what}: {', '.join(devices[what])}")
        for agent, code in devices["skipped"].items():
            lines.append(f"  skipped: {agent} ({code})")
    closed = [r for r in state["rounds"] if r["phase"] == "training"]
    if closed:
        last = closed[-1]
        quality = next((f", {q} {last[q]:.4f}" for q in ("accuracy", "r2")
                        if last.get(q) is not None), "")
        loss = "" if last["loss"] is None else f", fleet loss {last['loss']:.4f}"
        lines.append(f"  last closed round {last['round']}: {last['reported']}/"
                     f"{last['expected']} devices, {last['seconds']:.1f} s{loss}{quality}")
    final = [r for r in state["rounds"] if r["phase"] == "evaluation"]
    if final and final[-1]["loss"] is not None:
        quality = next((f", {q} {final[-1][q]:.4f}" for q in ("accuracy", "r2")
                        if final[-1].get(q) is not None), "")
        lines.append(f"  final model: fleet loss {final[-1]['loss']:.4f}{quality}")
    if state["rejected"]:
        lines.append("  rejected updates: " + ", ".join(
            f"{reason} {n}" for reason, n in state["rejected"].items()))
    if state["privacy"] is not None:
        p = state["privacy"]
        budget = "" if p["budget"] is None else f" of {p['budget']:g}"
        lines.append(f"  privacy: epsilon {p['epsilon']:.3f}{budget} spent")
    if state["ignored"]:
        lines.append("  ignored messages: " + ", ".join(
            f"{reason} {n}" for reason, n in state["ignored"].items()))
    return lines, code
