"""The fleet's state as Prometheus metrics (``fedmq_`` prefix, base units, ``_total`` counters).

Counters count the current run (from its closed rounds, as in ``rounds.csv``): a new
run starts them again, which Prometheus treats as a counter reset. Gauges are the
latest value. Collected from the view at scrape time, never kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

DEVICE_STATES = ("enrolled", "online", "expected", "reported", "waiting", "late", "skipped")
FLEET = ("loss", "accuracy", "balanced_accuracy", "r2", "mse", "mae")


def _version() -> str:
    try:
        return version("fedmq")
    except PackageNotFoundError:
        return "unknown"


class FleetCollector(Collector):
    """Metrics from ``state()`` (``FleetView.state``'s JSON) at each scrape."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        s = self._state()
        run, rounds = s["run"], s["rounds"]
        yield InfoMetricFamily("fedmq_build", "fedmq's version", value={"version": _version()})
        up = GaugeMetricFamily("fedmq_dashboard_connected",
                               "1 while the dashboard's MQTT link is up")
        up.add_metric([], 1.0 if s["connected"] else 0.0)
        yield up
        info = InfoMetricFamily("fedmq_run", "The run the fleet is in and its phase",
                                labels=["fleet", "run_id", "phase"])
        info.add_metric([s["fleet"], run["id"], run["phase"]], {})
        yield info
        yield _gauge("fedmq_round", "The round the fleet is in (0: statistics)", run["round"])
        yield _gauge("fedmq_rounds_planned", "Training rounds the run has in all",
                     run["rounds"])
        yield _gauge("fedmq_round_deadline_timestamp_seconds",
                     "When the open round closes at the latest (Unix time)", run["deadline"])
        closed = CounterMetricFamily("fedmq_rounds_closed", "Rounds closed in this run",
                                     labels=["phase"])
        for phase in ("statistics", "training", "evaluation"):
            closed.add_metric([phase], float(sum(r["phase"] == phase for r in rounds)))
        yield closed
        yield _counter("fedmq_updates_accepted", "Device updates counted in closed rounds",
                       sum(r["reported"] for r in rounds))
        rejected = CounterMetricFamily(
            "fedmq_updates_rejected", "Updates rejected in this run, by reason (the open "
            "round included)", labels=["reason"])
        for reason, n in s["rejected"].items():
            rejected.add_metric([reason], float(n))
        yield rejected
        yield _counter("fedmq_update_bytes", "Payload bytes of the updates closed rounds "
                       "accepted", sum(r["update_bytes"] for r in rounds))
        yield _counter("fedmq_model_bytes", "Bytes of the aggregator's announcements per "
                       "closed round", sum(r["model_bytes"] for r in rounds))
        last = rounds[-1] if rounds else {}
        yield _gauge("fedmq_round_duration_seconds", "How long the last closed round took",
                     last.get("seconds"))
        devices = GaugeMetricFamily("fedmq_devices", "Devices in the open round by state "
                                    "(enrolled and online: the fleet)", labels=["state"])
        for state in DEVICE_STATES:
            value = s["devices"][state]
            if value is not None:
                devices.add_metric([state], float(value if isinstance(value, int)
                                                  else len(value)))
        yield devices
        evaluated = [r for r in rounds if r["loss"] is not None]
        for name in FLEET:
            values = [r[name] for r in evaluated if r.get(name) is not None]
            if values:
                yield _gauge(f"fedmq_fleet_{name}", f"The fleet's federated {name} (latest "
                             "evaluated round)", values[-1])
        privacy = s["privacy"]
        if privacy is not None:
            yield _gauge("fedmq_privacy_epsilon_spent", "Device-level DP epsilon spent by the "
                         "run", privacy["epsilon"])
            yield _gauge("fedmq_privacy_epsilon_budget", "The run's epsilon budget",
                         privacy["budget"])
        ignored = CounterMetricFamily("fedmq_dashboard_messages_ignored",
                                      "Messages the dashboard ignored, by reason",
                                      labels=["reason"])
        for reason, n in s["ignored"].items():
            ignored.add_metric([reason], float(n))
        yield ignored


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], float(value))
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def registry_for(state: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state))
    return registry
