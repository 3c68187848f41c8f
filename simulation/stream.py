"""``fedmq simulate --stream``: the synthetic devices publish their readings over MQTT.

Each device's sensors publish its rows as JSON readings on its own local topic
(``local/<device id>/reading``, never under the fleet's prefix) at ``rate`` readings
per second; its agent subscribes through its ``[local]`` link, stores them in its
readings database and trains from there. The readings are the device's CSV rows as
the CSV agent reads them (``load_csv``), so a streamed run and a CSV run of the same
seed learn from the same numbers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.data import LocalData, load_csv
from fedmq.edge_agent.json_path import JsonPath
from fedmq.edge_agent.prediction_settings import PredictionSettings
from fedmq.edge_agent.stream_config import StreamConfig, TopicMap
from fedmq.protocol.errors import FedmqError
from fedmq.runtime.transport import MqttLink, MqttSettings

LOCAL_PREFIX = "local"  # the devices' own topics: not the fleet prefix (fedmq/<fleet>/)
DATABASE = "readings.sqlite3"


def local_topic(device_id: str) -> str:
    return f"{LOCAL_PREFIX}/{device_id}/reading"


def prediction_topic(device_id: str) -> str:
    return f"{LOCAL_PREFIX}/{device_id}/prediction"


def device_stream(device_id: str, columns: Sequence[str], state_dir: Path,
                  rows: int) -> StreamConfig:
    """What a simulated device's agent.toml would say: one topic, a field per column."""
    return StreamConfig(
        topics=(TopicMap(local_topic(device_id),
                         tuple((c, JsonPath.parse(f"$.{c}")) for c in columns), None),),
        columns=tuple(columns), database=str(state_dir / DATABASE),
        keep_rows=max(rows, 1), train_rows=max(rows, 1), join_seconds=0.0)


@dataclass(frozen=True)
class DeviceFeed:
    device_id: str
    data: LocalData
    database: Path

    @classmethod
    def from_csv(cls, device_id: str, csv: Path, features: tuple[str, ...], label: str,
                 database: Path) -> DeviceFeed:
        return cls(device_id, load_csv(csv, features, label), database)

    def payloads(self) -> list[bytes]:
        names = (*self.data.features, self.data.label)
        return [json.dumps(dict(zip(names, (*x.tolist(), float(y)), strict=True))).encode()
                for x, y in zip(self.data.X, self.data.y, strict=True)]


def streamed(configs: list[AgentConfig], paths: Sequence[Path],
             local: Callable[[str], MqttSettings]) -> list[DeviceFeed]:
    """Each agent reads its device's local topic into its readings database instead of its
    CSV (``configs`` changed in place); returns the feeds its sensors will publish."""
    feeds = []
    for i, (cfg, path) in enumerate(zip(configs, paths, strict=True)):
        assert cfg.state_dir is not None
        one = DeviceFeed.from_csv(cfg.agent_id, path, cfg.features, cfg.label,
                                  Path(cfg.state_dir) / DATABASE)
        configs[i] = replace(cfg, data_path="", local=local(cfg.agent_id),
                             local_client_id=f"{cfg.agent_id}-local",
                             predictions=PredictionSettings(topic=prediction_topic(cfg.agent_id)),
                             stream=device_stream(cfg.agent_id, (*cfg.features, cfg.label),
                                                  Path(cfg.state_dir), one.data.n_samples))
        feeds.append(one)
    return feeds


def wait_listening(agents: Sequence[EdgeAgent], spread: float, feeds: Sequence[DeviceFeed],
                   timeout: float = 120.0) -> None:
    """Until the agents' local links are connected (agents on threads of this process), or
    (agents in worker processes) every agent made its database, then the connect spread
    and a margin: a reading published before its agent subscribed is lost."""
    end = time.monotonic() + timeout + 2 * spread
    if not agents:
        while not all(f.database.exists() for f in feeds):
            if time.monotonic() > end:
                raise FedmqError("--stream: the agents did not start")
            time.sleep(0.1)
        time.sleep(spread + 3.0)
        return
    while not all(a.local_link is not None and a.local_link.connected for a in agents):
        if time.monotonic() > end:
            raise FedmqError("--stream: the agents' local links did not connect")
        time.sleep(0.05)
    time.sleep(0.5)  # their SUBSCRIBE reaches the broker right after the CONNACK


class PredictionCount:
    """Counts the predictions each device publishes on its local topic, as a subscriber
    there (a Home Assistant, say) sees them: the simulation's own client, not the agents'."""

    def __init__(self, settings: MqttSettings) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._link = MqttLink(settings, client_id="fedmq-sim-predictions", on_message=self._on,
                              subscriptions=[(prediction_topic("+"), 1)])

    def _on(self, topic: str, _payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 3:
            with self._lock:
                self.counts[parts[1]] = self.counts.get(parts[1], 0) + 1

    def __enter__(self) -> PredictionCount:
        self._link.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._link.close()


def stored_rows(database: Path) -> int:
    """Rows a device's agent stored so far (read-only; 0 before the database exists)."""
    if not database.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def feed(settings: MqttSettings, feeds: Sequence[DeviceFeed], rate: float, *,
         stop: threading.Event, progress: Callable[[str], None] = print,
         timeout: float = 300.0) -> float:
    """Publish every device's readings (QoS 1, ``rate`` per second per device, devices
    interleaved) and wait until every agent stored all of its own; returns the seconds."""
    start = time.monotonic()
    link = MqttLink(settings, client_id="fedmq-sim-sensors", on_message=lambda _t, _p: None)
    link.connect()
    try:
        queues = [(f.device_id, f.payloads()) for f in feeds]
        longest = max((len(p) for _, p in queues), default=0)
        for i in range(longest):  # one reading of every device per 1/rate seconds
            if stop.is_set():
                break
            for device_id, payloads in queues:
                if i < len(payloads):
                    link.publish(local_topic(device_id), payloads[i], wait=False)
            lag = start + (i + 1) / rate - time.monotonic()
            if lag > 0:
                stop.wait(lag)
        end = time.monotonic() + timeout
        while not stop.is_set():
            short = [f for f in feeds if stored_rows(f.database) < f.data.n_samples]
            if not short:
                break
            if time.monotonic() > end:
                raise FedmqError(f"--stream: {len(short)} agent(s) did not store all their "
                                 f"readings within {timeout:g} s (e.g. {short[0].device_id}: "
                                 f"{stored_rows(short[0].database)} of "
                                 f"{short[0].data.n_samples})")
            time.sleep(0.1)
    finally:
        link.close()
    seconds = time.monotonic() - start
    total = sum(f.data.n_samples for f in feeds)
    progress(f"stream: {total} readings of {len(feeds)} devices published on "
             f"{LOCAL_PREFIX}/<device>/reading and stored by their agents in {seconds:.1f} s")
    return seconds


def ingest_lines(feeds: Sequence[DeviceFeed], predictions: dict[str, int] | None = None,
                 *, limit: int = 20) -> list[str]:
    """The per-device table of a streamed run: readings published, rows stored, predictions
    (filled in by the predictor, when the agents make any)."""
    lines = [f"{'device':<12} {'published':>9} {'stored':>7} {'predictions':>11}"]
    shown = list(feeds)[:limit]
    for f in shown:
        made = "-" if predictions is None else str(predictions.get(f.device_id, 0))
        lines.append(f"{f.device_id:<12} {f.data.n_samples:>9} {stored_rows(f.database):>7} "
                     f"{made:>11}")
    if len(feeds) > limit:
        lines.append(f"... and {len(feeds) - limit} more devices")
    total_pub = sum(f.data.n_samples for f in feeds)
    total_stored = sum(stored_rows(f.database) for f in feeds)
    lines.append(f"{'all':<12} {total_pub:>9} {total_stored:>7}")
    return lines
