"""Local predictions: the personal or fleet model on each new reading, as JSON for the local broker.

The payloads are built by pure functions (``prediction_payloads``, ``discovery_config``);
``Predictor`` only keeps the current model and hands the bytes to a ``publish(topic,
payload, retain)`` callable: the device's LOCAL link, never the fleet's. Nothing here
waits on the network, so a burst of readings never stalls the round loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.prediction_settings import PredictionSettings, ha_id
from fedmq.models import (
    LinearRegressionModel,
    LogisticRegressionModel,
    ModelError,
    ModelSpec,
    load_model,
    make_model,
)
from fedmq.protocol.messages import RoundMessage

log = logging.getLogger(__name__)

PublishFn = Callable[[str, bytes, bool], object]
PERSONAL_MODEL = "personal_model.npz"  # written by the personal fine-tuning, never published
Model: TypeAlias = LinearRegressionModel | LogisticRegressionModel


@dataclass(frozen=True)
class ActiveModel:
    """The model predictions come from, and what the payload says about it."""

    model: Model
    which: str  # "global" | "personal"
    run: str
    version: int

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec


def same_task(a: ModelSpec, b: ModelSpec) -> bool:
    """Same kind, features and classes: a personal model may standardise differently."""
    return (a.kind, a.features, a.n_classes) == (b.kind, b.features, b.n_classes)


def fits_fleet(personal: ModelSpec, base: ModelSpec | None, fleet: ModelSpec) -> bool:
    """A personal model fits the fleet's current model when the spec it was derived from
    (its file's ``base_spec``) is the fleet's; a file without one, when the task is the same."""
    return base == fleet if base is not None else same_task(personal, fleet)


def prediction_payloads(active: ActiveModel, X: NDArray[np.float64],
                        timestamps: NDArray[np.float64], *, fleet: str,
                        device: str) -> list[dict[str, Any]]:
    """One JSON-ready dict per row of ``X``: the prediction, probabilities or value, model."""
    model = active.model
    base = {"model": active.which, "run": active.run, "version": active.version,
            "fleet": fleet, "device": device}
    out: list[dict[str, Any]] = []
    if isinstance(model, LogisticRegressionModel):
        proba = model.predict_proba(X)
        labels = model.predict(X)
        for ts, label, p in zip(timestamps, labels, proba, strict=True):
            out.append({"ts": float(ts), "prediction": int(label),
                        "probabilities": {str(c): float(v) for c, v in enumerate(p)}, **base})
    else:
        values = model.predict(X)
        for ts, value in zip(timestamps, values, strict=True):
            out.append({"ts": float(ts), "prediction": float(value), "value": float(value),
                        **base})
    return out


def discovery_config(settings: PredictionSettings, *, agent_id: str, fleet: str,
                     regression: bool | None = None) -> tuple[str, dict[str, Any]]:
    """Home Assistant MQTT discovery: (topic, retained config) for one sensor entity.

    Topic ``<discovery_prefix>/sensor/<node_id>/<object_id>/config`` (ids limited to
    ``[A-Za-z0-9_-]``); the state is the payload's ``prediction``, the whole JSON its
    attributes (probabilities, model, run, version).
    """
    node = ha_id(f"fedmq_{fleet}_{agent_id}")
    config: dict[str, Any] = {
        "name": "Prediction",
        "unique_id": f"{node}_prediction",
        "state_topic": settings.topic,
        "value_template": "{{ value_json.prediction }}",
        "json_attributes_topic": settings.topic,
        "icon": "mdi:chart-bell-curve",
        "device": {"identifiers": [node], "name": settings.device_name,
                   "model": "fedmq edge agent", "manufacturer": "fedmq"},
        "origin": {"name": "fedmq"},
    }
    if settings.qos:
        config["qos"] = settings.qos
    if regression:
        config["state_class"] = "measurement"
    return f"{settings.discovery_prefix}/sensor/{node}/prediction/config", config


class Predictor:
    """Predicts new readings with the personal model if there is one, else the fleet's.

    ``on_round`` (the agent's thread) and ``on_rows`` (a stream source's thread) may
    run concurrently: the model is swapped under a lock. Before the first model
    (version >= 1) nothing is published; those rows are counted.
    """

    def __init__(self, settings: PredictionSettings, publish: PublishFn, *, agent_id: str,
                 fleet: str, state_dir: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._publish = publish
        self.agent_id, self.fleet = agent_id, fleet
        self._personal_path = Path(state_dir) / PERSONAL_MODEL if state_dir else None
        self._clock = clock
        self._lock = threading.Lock()
        self._global: ActiveModel | None = None
        self._personal: ActiveModel | None = None
        self._personal_base: ModelSpec | None = None  # the fleet spec it was derived from
        self._personal_stamp: tuple[int, int, int] | None = None
        self._told: tuple[int, int, int] | None = None  # the misfit file already logged
        self._latest: tuple[NDArray[np.float64], float] | None = None
        self.published = 0  # predictions handed to the local link
        self.unmodelled = 0  # rows that arrived before any model
        self.dropped = 0  # older rows of a burst beyond max_per_batch, or not finite
        self.failed = 0  # publishes the local link refused

    # the model
    @property
    def active(self) -> ActiveModel | None:
        with self._lock:
            return self._choose()

    def on_round(self, msg: RoundMessage) -> bool:
        """Take the model a verified round message carries; True when it is a new one.

        A model exists from version 1 on (version 0 is a run's starting point); a new
        run's version 0 does not replace the last trained model. When the model changed,
        the latest reading is predicted again, so the sensor shows the new version.
        """
        if msg.state == "failed" or msg.model_version < 1:
            return False
        current = self._global
        if current is not None and (current.run, current.version) == (msg.run_id,
                                                                      msg.model_version):
            return False
        try:
            model = make_model(msg.spec).set_params_vector(msg.params_array)
        except ModelError as exc:
            log.warning("predictions: cannot use model version %d: %s", msg.model_version, exc)
            return False
        with self._lock:
            self._global = ActiveModel(model, "global", msg.run_id, msg.model_version)
            latest = self._latest
        if latest is not None:
            self.on_rows(latest[0][None, :], np.array([latest[1]]))
        return True

    def _refresh_personal(self) -> None:
        """Load the personal model when its file changed (a stat per batch, no more)."""
        path = self._personal_path
        if path is None:
            return
        try:
            st = os.stat(path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._personal_stamp:
            return
        self._personal_stamp, self._personal, self._personal_base = stamp, None, None
        if stamp is None:
            return
        try:
            spec, params, meta = load_model(path)
            model = make_model(spec).set_params_vector(params)
            base = meta.get("base_spec")
            self._personal_base = None if base is None else ModelSpec.from_dict(base)
        except ModelError as exc:
            log.warning("predictions: ignoring the personal model: %s", exc)
            return
        version = meta.get("model_version")
        self._personal = ActiveModel(model, "personal", str(meta.get("run_id", "")),
                                     version if isinstance(version, int) else 0)

    def _choose(self) -> ActiveModel | None:
        """The personal model when it fits the fleet's task, else the global one."""
        glob, personal = self._global, self._personal
        if glob is None:
            return None
        if personal is None:
            return glob
        # A personal model of an earlier run (the fleet moved on, perhaps without personal
        # models) is stale even when the specs match: the global model of this run wins.
        stale = bool(personal.run and glob.run and personal.run != glob.run)
        if stale or not fits_fleet(personal.spec, self._personal_base, glob.spec):
            if self._told != self._personal_stamp:
                self._told = self._personal_stamp
                log.info("predictions: the personal model (%s, features %s) was not derived from "
                         "the fleet's current model or run; predicting with the global one until "
                         "it is fitted again", personal.spec.kind,
                         ", ".join(personal.spec.features))
            return glob
        # Its own run/version when it recorded them, else the global model it started from.
        return ActiveModel(personal.model, "personal", personal.run or glob.run,
                           personal.version or glob.version)

    # the rows
    def remember(self, X: NDArray[np.float64], timestamps: NDArray[np.float64] | None = None
                 ) -> None:
        """Keep the newest row to predict once a model arrives, publishing nothing now."""
        if len(X):
            ts = self._clock() if timestamps is None else float(timestamps[-1])
            with self._lock:
                self._latest = (np.array(X[-1], dtype=np.float64), ts)

    def on_rows(self, X: NDArray[np.float64], timestamps: NDArray[np.float64] | None = None
                ) -> int:
        """Predict and publish new readings (rows of ``X``); returns how many were published."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or not len(X):
            return 0
        ts = np.full(len(X), self._clock()) if timestamps is None \
            else np.asarray(timestamps, dtype=np.float64)
        self.remember(X, ts)
        with self._lock:
            self._refresh_personal()
            active = self._choose()
        if active is None:
            self.unmodelled += len(X)
            return 0
        if X.shape[1] != active.spec.n_features:
            self.dropped += len(X)
            log.warning("predictions: rows have %d features, the model %d; not predicted",
                        X.shape[1], active.spec.n_features)
            return 0
        keep = np.isfinite(X).all(axis=1) & np.isfinite(ts)
        keep[: max(0, len(X) - self.settings.max_per_batch)] = False
        self.dropped += len(X) - int(keep.sum())
        if not keep.any():
            return 0
        rows = prediction_payloads(active, X[keep], ts[keep], fleet=self.fleet,
                                   device=self.agent_id)
        sent = 0
        for row in rows:
            sent += self._send(self.settings.topic, row, self.settings.retain)
        self.published += sent
        return sent

    def publish_discovery(self) -> bool:
        """The retained Home Assistant config (when ``home_assistant``); call on every connect."""
        if not self.settings.home_assistant:
            return False
        active = self.active
        regression = None if active is None else active.spec.kind == "linear"
        topic, config = discovery_config(self.settings, agent_id=self.agent_id,
                                         fleet=self.fleet, regression=regression)
        return bool(self._send(topic, config, True))

    def _send(self, topic: str, doc: dict[str, Any], retain: bool) -> int:
        try:
            payload = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
        except ValueError:  # a diverged model's inf/NaN: no sensor value is better
            self.dropped += 1
            return 0
        try:
            ok = self._publish(topic, payload, retain)
        except Exception as exc:  # the local broker is best effort: never the round loop
            self.failed += 1
            if self.failed == 1 or math.log2(self.failed).is_integer():
                log.warning("predictions: publishing to %s failed (%d so far): %s", topic,
                            self.failed, exc)
            return 0
        if ok is False:  # not connected: the local broker is down, the reading moves on
            self.failed += 1
            return 0
        return 1

    def summary(self) -> str:
        return (f"{self.published} predictions published, {self.unmodelled} readings before "
                f"any model, {self.dropped} dropped, {self.failed} failed")

