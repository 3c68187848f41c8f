"""Helpers for tests (importable as ``support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from fedmq.transport import MqttSettings
from models import ModelSpec
from protocol.topics import Topics

FEATURES = ("x1", "x2", "x3")
SPEC = ModelSpec(kind="logistic", features=FEATURES, n_classes=2,
                 center=(0.5, -1.0, 0.0), scale=(1.0, 2.0, 0.5))


def local_data(seed: int, n: int) -> LocalData:
    """A small, learnable, device-specific classification set."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))) * (1.0, 2.0, 0.5) + (0.5 + 0.2 * seed, -1.0, 0.0)
    logits = 1.5 * X[:, 0] - 0.7 * X[:, 1] + 2.0 * X[:, 2] - 0.3
    y = (logits + rng.normal(scale=0.5, size=n) > 0).astype(np.float64)
    return LocalData(X=X, y=y, features=FEATURES, label="y")


def agent_config(port: int, agent_id: str, **extra: Any) -> AgentConfig:
    return AgentConfig(agent_id=agent_id, topics=Topics("test"), data_path="unused",
                       features=FEATURES, label="y", mqtt=MqttSettings(port=port), seed=1,
                       **extra)


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` on a thread, keeping its return value or exception."""
    out: dict[str, Any] = {}

    def wrapper() -> None:
        try:
            out["result"] = target()
        except BaseException as exc:  # surfaced by the test, not swallowed
            out["error"] = exc

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, out
