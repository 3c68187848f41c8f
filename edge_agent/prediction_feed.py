"""Where the agent's predictions come from and go: new rows in, the local link out.

``LocalPredictions`` is all the agent holds: it gives the ``Predictor`` the stream's rows
(its ``on_rows`` hook) or the rows a logger appended to the CSV (``CsvFeed``), publishes
over the device's LOCAL link (never the fleet's), and sends the Home Assistant discovery
config again whenever that link (re)connects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from fedmq.edge_agent.prediction_settings import PredictionSettings
from fedmq.edge_agent.predictions import Predictor
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import RoundMessage

log = logging.getLogger(__name__)
POLL_SECONDS = 5.0  # how often the CSV's stamp is checked (a changed file is parsed whole)


class Link(Protocol):
    """The device's own broker (edge_agent.local_link.LocalLink)."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, retain: bool = False, *, qos: int = 0,
                wait: bool = False) -> bool: ...


class Stream(Protocol):
    on_rows: Any  # edge_agent.stream.StreamSource calls it with every stored batch


class RowsLike(Protocol):
    """The agent's CSV rows (edge_agent.data.DataFile): re-read when the file changed."""

    @property
    def data(self) -> Any: ...

    def refresh(self) -> bool: ...


class CsvFeed:
    """Feeds the rows a logger appended to the CSV since the last read to a Predictor.

    The agent polls it from its loop (at most every ``every`` seconds: a re-read parses
    the whole file). Rows already there at start are not predicted; the newest one is
    remembered, so the first model publishes a prediction for it. A file replaced by a
    shorter one has only its newest row predicted (which rows are new is unknown).
    """

    def __init__(self, predictor: Predictor, rows: RowsLike, *, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._predictor, self._rows, self._clock = predictor, rows, clock
        self._every = POLL_SECONDS if every is None else every
        self._data = rows.data
        self._due = clock() + self._every
        predictor.remember(self._data.X[-1:])

    def poll(self) -> int:
        """Predict the new rows if the file changed; returns how many were published."""
        if self._clock() < self._due:
            return 0
        self._due = self._clock() + self._every
        try:
            self._rows.refresh()
        except ConfigError:  # DataError: the round that needs the file reports it
            return 0
        # Compared by identity: a round's own re-read (before training) also counts.
        data, seen = self._rows.data, len(self._data.X)
        if data is self._data:
            return 0
        self._data = data
        X = data.X
        return self._predictor.on_rows(X[seen:] if len(X) > seen else X[-1:])


class LocalPredictions:
    """The agent's predictions: fed by a stream or a CSV, published on the local link."""

    def __init__(self, settings: PredictionSettings, link: Link, *, agent_id: str,
                 fleet: str, state_dir: str | None, rows: RowsLike | None = None,
                 stream: Stream | None = None) -> None:
        qos = settings.qos

        def publish(topic: str, payload: bytes, retain: bool) -> bool:
            # Never waits for the broker: the agent's loop and the stream's writer go on.
            return link.publish(topic, payload, retain, qos=qos, wait=False)

        self.predictor = Predictor(settings, publish, agent_id=agent_id, fleet=fleet,
                                   state_dir=state_dir)
        self._link = link
        self._was_connected = False
        self._feed: CsvFeed | None = None
        if stream is not None:
            stream.on_rows = self.predictor.on_rows
        elif rows is not None:
            self._feed = CsvFeed(self.predictor, rows)
        log.info("predictions on the local broker, topic %s%s", settings.topic,
                 " (with a Home Assistant discovery config)" if settings.home_assistant
                 else "")

    def on_round(self, msg: RoundMessage) -> None:
        """A verified round message of this fleet: its model, if it is a new one."""
        if self.predictor.on_round(msg):
            log.info("predictions: model version %d of run %s", msg.model_version, msg.run_id)

    def tick(self) -> None:
        """From the agent's loop: discovery after each (re)connect, new CSV rows."""
        connected = self._link.connected
        if connected and not self._was_connected:
            self.predictor.publish_discovery()
        self._was_connected = connected
        if self._feed is not None:
            self._feed.poll()

    def summary(self) -> str:
        return self.predictor.summary()
