"""The sensor-stream data source: readings from the local broker into the readings store.

The local link's callback only queues each message (paho's thread). One writer thread
takes everything queued, parses it (``[data.stream]`` paths), joins topics by time,
commits rows and join state in ONE transaction, and only then acknowledges the messages
(manual PUBACK): an acknowledged reading is on disk, an unacknowledged one comes back
from the broker after a crash. Rounds read the store (``StreamRows``) exactly like a CSV.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.data import DataError, DataFile, GivenRows, LocalData, split_holdout
from fedmq.edge_agent.json_path import ReadingError
from fedmq.edge_agent.local_link import Delivery, LocalLink
from fedmq.edge_agent.stream_config import StreamConfig
from fedmq.edge_agent.stream_join import Joiner, Reading
from fedmq.runtime.droplog import DropLog
from fedmq.runtime.transport import MqttSettings, NetworkLoop, topic_matches

if TYPE_CHECKING:  # imported where a stream starts: a CSV agent needs no sqlite3 (~0.8 MB)
    from fedmq.edge_agent.readings_store import ReadingsStore

log = logging.getLogger(__name__)
RowsHook = Callable[[NDArray[np.float64], NDArray[np.float64]], None]
MAX_PAYLOAD = 64 * 1024  # a sensor reading is a few hundred bytes
MAX_QUEUED = 10_000  # messages between the network thread and the writer
MAX_AHEAD = 300.0  # a reading's time may lead its arrival by this much (clock skew)


def parse(config: StreamConfig, topic: str, payload: bytes, arrival: float
          ) -> tuple[int, float, dict[str, float]]:
    """(topic index, time, values by column) of one message; ReadingError says why not."""
    index = next((i for i, t in enumerate(config.topics) if topic_matches(t.topic, topic)),
                 None)
    if index is None:
        raise ReadingError("unknown-topic", f"no [[data.stream.topics]] matches {topic}")
    if len(payload) > MAX_PAYLOAD:
        raise ReadingError("too-large", f"payload of {len(payload)} bytes")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReadingError("not-json", f"not JSON ({exc})") from None
    mapping = config.topics[index]
    values = {name: path.number(doc) for name, path in mapping.fields}
    ts = arrival
    if mapping.time is not None:
        ts = mapping.time.number(doc)
        if ts > 1e11:  # epoch milliseconds (Zigbee2MQTT, ESPHome)
            ts /= 1000.0
        if ts > arrival + MAX_AHEAD:  # one would move the join's "newest" into the future
            raise ReadingError("future", f"time {ts:.0f} is {ts - arrival:.0f} s ahead of "
                               f"its arrival (more than {MAX_AHEAD:g} s)")
    return index, ts, values


def message_digest(topic: str, payload: bytes) -> int:
    """64 bits naming one message's bytes (a resend has the same)."""
    digest = hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class StreamSource:
    """Ingests ``[data.stream]`` topics from a LocalLink into the readings store."""

    def __init__(self, config: StreamConfig, *, on_rows: RowsHook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.on_rows = on_rows  # i23-predict's Predictor.on_rows(X, timestamps)
        self._clock = clock
        rule = config.label_rule
        self._join_columns = config.columns[:-1] if rule else config.columns
        from fedmq.edge_agent.readings_store import Pending, ReadingsStore

        self._pending = Pending
        self.store: ReadingsStore = ReadingsStore(config.database, config.columns,
                                   keep_rows=config.keep_rows, keep_days=config.keep_days)
        self._joiner = Joiner(self._join_columns, config.join_seconds)
        self._queue: queue.Queue[Delivery | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._drops = DropLog(log, interval=60.0, about="({})")  # keyed by reason
        self.commit_failures = 0  # batches left unacknowledged because the store failed
        self._failures_unlogged = 0
        self._failure_logged = float("-inf")
        self.rejected: Counter[str] = Counter()  # unusable messages per reason
        self.ingested = 0  # rows stored by this process
        self.stale_rows = self.late = 0
        self.resent = 0  # resends of messages already stored (after a crash), skipped
        self._thread: threading.Thread | None = None
        self._persisted: set[int] = set()
        pending = self.store.pending()  # readings of a join from before a restart
        self._next_id = max((p.id for p in pending), default=0) + 1
        if pending:
            self._joiner.add([Reading(p.id, p.topic, p.ts, p.values) for p in pending])
            self._persisted = {p.id for p in pending}
        self._last_retention = 0.0

    def attach(self, link: LocalLink) -> None:
        """Subscribe to every ``[[data.stream.topics]]`` filter and start the writer."""
        for t in self.config.topics:
            link.subscribe(t.topic, self._arrived, qos=self.config.qos, manual_ack=True)
        self._thread = threading.Thread(target=self._write_loop, name="stream-writer",
                                        daemon=True)
        self._thread.start()

    def _arrived(self, delivery: Delivery) -> None:
        """paho's thread: queue, nothing more. Full queue: drop AND acknowledge (counted).

        Left unacknowledged, a dropped QoS 1 message would hold one slot of the broker's
        inflight window (Mosquitto: 20) until the next reconnect: a few such drops and the
        broker sends nothing more, ever. Blocking here instead would stall paho's thread
        (keepalive, the predictions' publishes). Overload is a counted, documented loss."""
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            self._reject("queue-full", delivery.topic, f"{MAX_QUEUED} readings queued")
            delivery.ack()

    def _reject(self, reason: str, topic: str, why: str) -> None:
        self.rejected[reason] += 1
        self._drops.drop(reason, f"{topic}: {why}")

    def _commit_failed(self, n: int, exc: Exception) -> None:
        """One line a minute (no traceback): a full or failing disk fails every batch."""
        self.commit_failures += 1
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._failure_logged < 60.0:
            return
        log.error("storing readings failed %d time(s) (last: %d readings, %s: %s); they stay "
                  "unacknowledged and come back from the broker", self._failures_unlogged, n,
                  type(exc).__name__, exc)
        self._failures_unlogged = 0
        self._failure_logged = now

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.store.close()

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < 1000:  # everything queued meanwhile: one commit, one fsync
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self.ingest(batch)
            except Exception as exc:  # a disk error must not end ingestion: nothing acked is lost
                self._commit_failed(len(batch), exc)
                time.sleep(1.0)

    def ingest(self, batch: list[Delivery]) -> int:
        """Parse, join, commit, then acknowledge ``batch``; returns the rows stored."""
        arrival = self._clock()
        readings = []
        digests = []
        rows: list[tuple[float, list[float]]] = []
        stale_rows = late = 0
        for d in batch:
            digest = message_digest(d.topic, d.payload)
            if d.dup and self.store.was_seen(digest):
                self.resent += 1  # stored before the agent went away; not an error
                continue
            digests.append(digest)
            try:
                index, ts, values = parse(self.config, d.topic, d.payload, arrival)
            except ReadingError as exc:
                self._reject(exc.reason, d.topic, str(exc))
                continue
            except Exception as exc:  # one odd message (RecursionError...) must not stall the batch
                self._reject("unreadable", d.topic, f"{type(exc).__name__}: {exc}")
                continue
            reading = Reading(self._next_id, index, ts, values)
            self._next_id += 1
            try:
                result = self._joiner.add([reading])
            except Exception as exc:  # as above: reject this message only
                self._reject("unjoinable", d.topic, f"{type(exc).__name__}: {exc}")
                continue
            readings.append(reading)
            rows.extend(result.rows)
            stale_rows += result.stale_rows
            late += result.late
        if self.config.label_rule is not None:
            rule = self.config.label_rule
            i = self._join_columns.index(rule.feature)
            rows = [(ts, [*values, rule(values[i])]) for ts, values in rows]
        open_ids = self._joiner.open_ids
        fresh = [self._pending(r.id, r.topic, r.ts, r.values) for r in readings
                 if r.id in open_ids]
        gone = self._persisted - open_ids
        self.store.commit(rows, add_pending=fresh, drop_pending=gone, seen=digests)
        self._persisted = (self._persisted - gone) | {p.id for p in fresh}
        for d in batch:  # stored (or rejected for good): the broker may forget them
            d.ack()
        self.ingested += len(rows)
        for _ in range(stale_rows):
            self._reject("incomplete-row", "join", f"no full row within "
                         f"{self.config.join_seconds:g} s")
        for _ in range(late):
            self._reject("late", "join", "older than the join window on arrival")
        self.stale_rows += stale_rows
        self.late += late
        if rows and self.on_rows is not None:
            table = np.asarray([v for _, v in rows], dtype=np.float64)
            try:
                self.on_rows(table[:, :-1], np.asarray([t for t, _ in rows]))
            except Exception:  # a predictor's bug must not stop ingestion
                log.exception("on_rows hook failed")
        if arrival - self._last_retention > 10.0:
            self._last_retention = arrival
            self.store.retain(arrival)
        return len(rows)


class StreamRows:
    """The rows a round trains on, read from the store (``DataFile``'s interface)."""

    def __init__(self, config: StreamConfig, features: tuple[str, ...], label: str, *,
                 holdout: float = 0.0, seed: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.features, self.label = config, features, label
        self.holdout, self.seed, self._clock = holdout, seed, clock
        self.path: Path | None = Path(config.database)
        from fedmq.edge_agent.readings_store import ReadingsStore

        self._store = ReadingsStore(config.database, config.columns,
                                    keep_rows=config.keep_rows, keep_days=config.keep_days)
        self._stamp: tuple[int, int] | None = None
        empty = np.zeros((0, len(features)))
        self.data = self.train = self.evaluation = LocalData(
            X=empty, y=np.zeros(0), features=features, label=label)
        # No readings yet: a round skips with data-error until there are.
        with contextlib.suppress(DataError):
            self.refresh()

    def stored_ever(self) -> int:
        """Readings ever stored here: unlike the rows kept, retention never lowers it."""
        return self._store.stored_ever()

    def refresh(self) -> bool:
        """Read the store again if rows arrived or left; True if it did. Raises DataError
        when there is nothing to train on (the CSV path's "no rows")."""
        stamp = (self._store.last_id(), self._store.count())
        # A time window moves on without new rows: read it again every time.
        if stamp == self._stamp and self.data.n_samples and self.config.train_on == "latest":
            return False
        c = self.config
        if c.train_on == "window":
            assert c.train_seconds is not None
            _ts, table = self._store.window(c.train_seconds, self._clock())
        else:
            _ts, table = self._store.latest(c.train_rows)
        if not len(table):
            raise DataError(f"readings database {self.path} has no rows"
                            + (f" from the last {c.train_seconds:g} s"
                               if c.train_on == "window" else " yet"))
        data = LocalData(X=table[:, :-1], y=table[:, -1], features=self.features,
                         label=self.label)
        train, evaluation = split_holdout(data, self.holdout, self.seed)
        self.data, self.train, self.evaluation = data, train, evaluation
        self._stamp = stamp
        return True

    def close(self) -> None:
        self._store.close()


Rows = DataFile | GivenRows | StreamRows


def data_source(config: AgentConfig, data: LocalData | None, network: NetworkLoop | None
                ) -> tuple[Rows, StreamSource | None, LocalLink | None]:
    """An agent's rows (given, its CSV, or its readings store), its stream source and its
    link to the device's own broker (``[local]``, or the stream's default 127.0.0.1:1883):
    a connection of its own, never the fleet link."""
    stream: StreamSource | None = None
    rows: Rows
    if data is not None:
        rows = GivenRows(data, holdout=config.holdout, seed=config.agent_id)
    elif config.stream is not None:
        stream = StreamSource(config.stream)
        rows = StreamRows(config.stream, config.features, config.label,
                          holdout=config.holdout, seed=config.agent_id)
    else:
        rows = DataFile(config.data_path, config.features, config.label,
                        delimiter=config.delimiter, holdout=config.holdout,
                        seed=config.agent_id)
    link = None
    if stream is not None or config.local is not None or config.predictions is not None:
        link = LocalLink(config.local or MqttSettings(), network=network,
                         client_id=config.local_client_id or f"{config.agent_id}-local")
        if stream is not None:
            stream.attach(link)
    return rows, stream, link
