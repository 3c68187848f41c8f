"""The aggregator's restart state: which run and round, and the updates accepted so far.

Written atomically at every step that matters (round opened, update accepted,
round closed, run finished), so a crash or reboot of the gateway at any moment
leaves a state the next start can resume from: an open round reopens with the
updates it had accepted; a closed round is never reopened.

Files in ``state_dir``: ``run.json`` (this checkpoint), ``global_model.npz``
(see RunStore), ``open_round/<agent>.fmqu`` (accepted signed payloads of the
open round, re-verified on resume like any update).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmq.files import write_atomic
from protocol.errors import ConfigError
from protocol.topics import check_name

log = logging.getLogger(__name__)
SCHEMA = "fedmq.aggregator-state/1"
STATUSES = ("open", "closed", "finished")


@dataclass(frozen=True)
class RunCheckpoint:
    run_id: str
    fleet: str
    key_fingerprint: str
    codec_digest: str
    round_id: int
    model_version: int
    status: str
    expected: tuple[str, ...] = ()
    sampled: bool = False
    opened_at: float = 0.0
    deadline: float = 0.0
    extensions: int = 0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"checkpoint status must be one of {STATUSES}")


class Checkpoints:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "run.json"
        self.updates_dir = state_dir / "open_round"

    def load(self) -> RunCheckpoint | None:
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            if doc.pop("schema", None) != SCHEMA:
                raise ValueError(f"not a {SCHEMA} file")
            doc["expected"] = tuple(doc.get("expected", ()))
            return RunCheckpoint(**doc)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot resume from {self.path}: {exc}; move it away to "
                              "start a new run") from exc

    def save(self, cp: RunCheckpoint) -> None:
        doc = {"schema": SCHEMA, **asdict(cp), "expected": list(cp.expected)}
        write_atomic(self.path, json.dumps(doc, indent=1).encode())

    def save_update(self, agent_id: str, payload: bytes) -> None:
        check_name(agent_id, "agent id")  # it becomes a file name
        write_atomic(self.updates_dir / f"{agent_id}.fmqu", payload)

    def load_updates(self) -> list[tuple[str, bytes]]:
        if not self.updates_dir.is_dir():
            return []
        return [(p.stem, p.read_bytes()) for p in sorted(self.updates_dir.glob("*.fmqu"))]

    def clear_updates(self) -> None:
        if self.updates_dir.is_dir():
            for p in self.updates_dir.glob("*.fmqu"):
                p.unlink()


@dataclass(frozen=True)
class StartPoint:
    """Where a run (re)starts: a fresh run, the next round, or an open round to resume."""

    run_id: str
    round_id: int
    version: int
    params: NDArray[np.float64]
    open_round: RunCheckpoint | None = None


def start_point(cp: RunCheckpoint | None, *, identity: tuple[str, str, str],
                saved_params: NDArray[np.float64], saved_version: int | None,
                fresh_run_id: str) -> StartPoint:
    """Decide how to start from the last checkpoint and the last saved model.

    ``identity`` is (fleet, key fingerprint, codec digest) of this aggregator: a
    checkpoint of another one is refused rather than silently mixed in.
    """
    if cp is None or cp.status == "finished":
        return StartPoint(fresh_run_id, 1, 0, np.zeros_like(saved_params))
    if (cp.fleet, cp.key_fingerprint, cp.codec_digest) != identity:
        raise ConfigError("the saved run belongs to another fleet, key or codec; move "
                          "state_dir away or set [output] resume = false")
    version = 0 if saved_version is None else saved_version
    params = saved_params if saved_version is not None else np.zeros_like(saved_params)
    if cp.status == "open" and version == cp.model_version:
        return StartPoint(cp.run_id, cp.round_id, cp.model_version, params, open_round=cp)
    # Closed, or closed and saved just before a crash could record it: the model
    # file is one version ahead. Either way the round is done; never reopen it.
    return StartPoint(cp.run_id, cp.round_id + 1, version, params)
