"""The aggregator's restart state: which run and round, and the updates accepted so far.

Written atomically at every step that matters (round opened, update accepted,
round closed, run finished), so a crash or reboot of the gateway at any moment
leaves a state the next start can resume from: an open round reopens with the
updates it had accepted; a closed round is never reopened.

Files in the run's directory (``<state_dir>/runs/<run_id>/``, see aggregator.runs):
``run.json`` (this checkpoint), ``global_model.npz`` (see RunStore),
``open_round/accepted.sqlite3`` (accepted signed payloads of the open round,
committed in batches by aggregator.commit, re-verified on resume like any update;
``open_round/<agent>.fmqu`` files of earlier versions are still read).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.commit import FILE, UpdateLog
from fedmq.models import ModelSpec
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import write_atomic

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
    # Devices the culprit search named: a restart must not let them back in.
    quarantined: tuple[str, ...] = ()
    # aggregator.runs.spec_digest of [model]; "" in files from before it was recorded.
    model_digest: str = ""

    def __post_init__(self) -> None:
        # Strict: a hand-edited "25" or "soon" must stop here, not deep in the round loop.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("expected", "quarantined"):
                if not (isinstance(value, tuple) and all(isinstance(a, str) for a in value)):
                    raise ConfigError(f"{f.name} must be a list of agent ids")
            elif not _has_type(value, f.type):
                raise ConfigError(f"{f.name} must be {_TYPE_NAMES[str(f.type)]}, "
                                  f"not {json.dumps(value, default=str)}")
        if self.status not in STATUSES:
            raise ConfigError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.round_id < 1 or self.model_version < 0 or self.extensions < 0:
            raise ConfigError("round_id must be >= 1, model_version and extensions >= 0")


_TYPE_NAMES = {"str": "a string", "int": "an integer", "bool": "true or false",
               "float": "a number"}


def _has_type(value: object, type_name: object) -> bool:
    # bool is an int subclass in Python, but true is no round number.
    if type_name == "str":
        return isinstance(value, str)
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Checkpoints:
    def __init__(self, run_dir: Path) -> None:
        self._writer: UpdateLog | None = None  # closed when use() moves to another run
        self.use(run_dir)

    def use(self, run_dir: Path) -> None:
        """Point at another run's directory (the aggregator picks its run at start)."""
        self.path = run_dir / "run.json"
        self.updates_dir = run_dir / "open_round"
        if self._writer is not None:
            self._writer.close()
        self._writer = self.accepted = UpdateLog(self.updates_dir / FILE)

    def close(self) -> None:
        """Let go of the open round's database (the process goes on: a connection left to
        the garbage collector folded its WAL into a run that had moved on)."""
        if self._writer is not None:
            self._writer.close()

    def load(self) -> RunCheckpoint | None:
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_bytes().decode())
            if not isinstance(doc, dict) or doc.pop("schema", None) != SCHEMA:
                raise ValueError(f"not a {SCHEMA} file")
            names = {f.name for f in fields(RunCheckpoint)}
            if unknown := sorted(set(doc) - names):
                raise ValueError(f"unknown field(s) {', '.join(unknown)}")
            for name in ("expected", "quarantined"):
                if isinstance(doc.get(name), list):
                    doc[name] = tuple(doc[name])
            return RunCheckpoint(**doc)
        except (OSError, ValueError, TypeError, ConfigError) as exc:
            raise ConfigError(f"cannot resume from {self.path}: {exc}; restore it, or set "
                              "[output] resume = false to start a new run beside it") from exc

    def save(self, cp: RunCheckpoint) -> None:
        doc = {"schema": SCHEMA, **asdict(cp), "expected": list(cp.expected),
               "quarantined": list(cp.quarantined)}
        try:
            write_atomic(self.path, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            raise ConfigError(f"cannot write checkpoint {self.path}: {exc.strerror}") from exc

    def save_update(self, agent_id: str, payload: bytes) -> None:
        self.save_updates([(agent_id, payload)])

    def save_updates(self, batch: list[tuple[str, bytes]]) -> None:
        """Commit accepted payloads (member, payload) in one transaction, one fsync;
        OSError if they could not be: then none of them is stored."""
        self.accepted.append(batch)

    def load_updates(self) -> list[tuple[str, bytes]]:
        """The accepted payloads of the open round; unreadable ones are an error, never
        silently "0 updates restored" (each was acknowledged to its agent)."""
        out = []
        for p in self._update_files():  # one file per update, as earlier versions kept them
            try:
                out.append((p.stem, p.read_bytes()))
            except OSError as exc:
                raise ConfigError(f"cannot read accepted update {p}: {exc.strerror}; restore "
                                  "it or move it away (that agent's update is then lost)") from exc
        return out + self.accepted.load()

    def clear_updates(self) -> None:
        for p in self._update_files():
            try:
                p.unlink()
            except OSError as exc:
                raise ConfigError(f"cannot remove {p}: {exc.strerror}") from exc
        self.accepted.clear()

    def _update_files(self) -> Iterator[Path]:
        # Not Path.glob: it swallows a permission error and reports an empty directory.
        d = self.updates_dir
        if not d.exists() and not d.is_symlink():
            return iter(())
        if not d.is_dir():
            raise ConfigError(f"{d} is not a directory; it should hold the open round's "
                              "accepted updates (move it away)")
        try:
            names = sorted(e.name for e in os.scandir(d))
        except OSError as exc:
            raise ConfigError(f"cannot read directory {d}: {exc.strerror}") from exc
        return (d / n for n in names if n.endswith(".fmqu"))


@dataclass(frozen=True)
class StartPoint:
    """Where a run (re)starts: a fresh run, the next round, or an open round to resume."""

    run_id: str
    round_id: int
    version: int
    params: NDArray[np.float64]
    open_round: RunCheckpoint | None = None
    # The spec a resumed run trains (its statistics round's); None: a new run decides.
    spec: ModelSpec | None = None


def start_point(cp: RunCheckpoint | None, *, identity: tuple[str, str, str],
                saved_params: NDArray[np.float64], saved_version: int | None,
                fresh_run_id: str, model_file: str = "global_model.npz") -> StartPoint:
    """Decide how to start from the last checkpoint and the last saved model.

    ``identity`` is (fleet, key fingerprint, codec digest) of this aggregator: a
    checkpoint of another one is refused rather than silently mixed in.
    """
    if cp is None or cp.status == "finished":
        return StartPoint(fresh_run_id, 1, 0, np.zeros_like(saved_params))
    if (cp.fleet, cp.key_fingerprint, cp.codec_digest) != identity:
        raise ConfigError("the saved run belongs to another fleet, key or codec; set "
                          "[output] resume = false to start a new run beside it")
    # The model must be the checkpoint's version, or one ahead (saved just before a crash
    # could checkpoint it). Anything else would restart training from zero, or announce
    # the run finished with a zero model.
    allowed = (cp.model_version,) if cp.status == "closed" else (
        cp.model_version, cp.model_version + 1)
    never_saved = cp.status == "open" and cp.model_version == 0  # round 1 still open
    if saved_version not in allowed and not (saved_version is None and never_saved):
        what = ("is missing" if saved_version is None
                else f"holds model version {saved_version}")
        raise ConfigError(
            f"{model_file} {what} but run.json is at model version {cp.model_version} (round "
            f"{cp.round_id}, {cp.status}); restore it, or set [output] resume = false to "
            "start a new run beside it")
    version = 0 if saved_version is None else saved_version
    params = saved_params if saved_version is not None else np.zeros_like(saved_params)
    if cp.status == "open" and version == cp.model_version:
        return StartPoint(cp.run_id, cp.round_id, cp.model_version, params, open_round=cp)
    # Closed, or closed and saved just before a crash could record it: the model
    # file is one version ahead. Either way the round is done; never reopen it.
    return StartPoint(cp.run_id, cp.round_id + 1, version, params)
