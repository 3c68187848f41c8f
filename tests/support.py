"""Helpers for tests (importable as ``support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from fedmq.transport import MqttSettings
from models import ModelSpec
from protocol.signing import Ed25519PublicKey, Signer
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


AGGREGATOR_SIGNER = Signer.from_seed(b"test-aggregator")
KEY_DIR = Path(tempfile.mkdtemp(prefix="fedmq-test-keys-"))


def signer_for(agent_id: str) -> Signer:
    """Each test agent's Ed25519 key, derived from its id (tests only)."""
    return Signer.from_seed(b"test-agent:" + agent_id.encode())


class EnrolledFleet(Mapping[str, Ed25519PublicKey]):
    """An allow-list holding every agent id with its derived key, except 'unenrolled-*'."""

    def __getitem__(self, agent_id: str) -> Ed25519PublicKey:
        if agent_id.startswith("unenrolled"):
            raise KeyError(agent_id)
        return signer_for(agent_id).public_key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def agent_config(port: int, agent_id: str, **extra: Any) -> AgentConfig:
    key_file = KEY_DIR / f"{agent_id}.key"
    if not key_file.exists():
        key_file.write_bytes(signer_for(agent_id).to_pem())
        key_file.chmod(0o600)
    return AgentConfig(agent_id=agent_id, topics=Topics("test"), data_path="unused",
                       features=FEATURES, label="y", mqtt=MqttSettings(port=port), seed=1,
                       signing_key_file=str(key_file), **extra)


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
