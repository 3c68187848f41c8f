"""What a run keeps on disk: its latest global model and a per-round log (with the run id).

The round's audit row travels inside the model file's metadata, written before
the round is checkpointed as closed: a crash before the ``rounds.csv`` append
is repaired on resume (``recover_record``), never a lost or duplicated row.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from fedmq.models import ModelError, ModelSpec, load_model
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import save_model, write_atomic

if TYPE_CHECKING:
    from fedmq.aggregator.outcome import RoundResult

BASE_FIELDS = ("run_id", "round", "model_version", "closed_by", "reported", "expected",
               "rejected", "total_weight", "seconds", "update_norm", "agents", "excluded")
# The fleet's own numbers (federated evaluation of the model the round started from, or of
# the final model in the "evaluation" round; empty where the task has no such metric),
# and its health: the share of update values clipped, skip reasons ("code:count ...").
FLEET_FIELDS = ("phase", "eval_rows", "fleet_loss", "fleet_accuracy", "fleet_balanced_accuracy",
                "fleet_recall", "fleet_mse", "fleet_mae", "fleet_r2", "clipped_share", "skipped",
                "epsilon")  # device-level DP: the run's epsilon spent after the round
# [training] personal: the devices' personal models on the same rows (empty without them).
PERSONAL_FIELDS = ("personal_loss", "personal_accuracy", "personal_balanced_accuracy",
                   "personal_r2")
ROUND_LOG_FIELDS = BASE_FIELDS + FLEET_FIELDS + PERSONAL_FIELDS
PRE_PERSONAL_FIELDS = BASE_FIELDS + FLEET_FIELDS  # logs written before the personal columns
PRE_DP_FIELDS = PRE_PERSONAL_FIELDS[:-1]  # logs written before the epsilon column
# Logs and audit rows written before the run id column: read with this run's id in front;
# before the fleet columns: read with them empty.
LEGACY_FIELDS = BASE_FIELDS[1:]


def _fleet_cells(result: RoundResult) -> list[str]:
    ev = result.evaluation
    metrics = {} if ev is None else ev.metrics
    cells = [result.phase, "" if ev is None else str(ev.n),
             "" if ev is None else f"{ev.loss:.6g}"]
    cells += [f"{metrics[m]:.6f}" if m in metrics else ""
              for m in ("accuracy", "balanced_accuracy")]
    cells.append("" if ev is None else " ".join("n/a" if r is None else f"{r:.4f}"
                                                for r in ev.recall))
    cells += [f"{metrics[m]:.6g}" if m in metrics else "" for m in ("mse", "mae", "r2")]
    cells.append(f"{result.clipped_share:.4f}")
    cells.append(" ".join(f"{code}:{n}" for code, n in sorted(result.skipped.items())))
    cells.append("" if result.epsilon is None else f"{result.epsilon:.6g}")
    pe = result.personal
    personal = {} if pe is None else pe.metrics
    cells.append("" if pe is None else f"{pe.loss:.6g}")
    cells += [f"{personal[m]:.6f}" if m in personal else ""
              for m in ("accuracy", "balanced_accuracy", "r2")]
    return cells


def audit_row(run_id: str, result: RoundResult) -> list[str]:
    return [run_id, str(result.round_id), str(result.model_version), result.closed_by,
            str(len(result.reported)), str(result.expected), str(result.rejected),
            f"{result.total_weight:.0f}", f"{result.seconds:.3f}", f"{result.update_norm:.6g}",
            " ".join(result.reported), " ".join(result.excluded), *_fleet_cells(result)]


def _upgrade(row: list[str], run_id: str) -> list[str]:
    """A row of an older log or audit record, in today's columns."""
    if len(row) == len(LEGACY_FIELDS):
        row = [run_id, *row]
    if len(row) == len(BASE_FIELDS):
        row = [*row, "training", *[""] * (len(FLEET_FIELDS) - 1)]
    if len(row) == len(PRE_DP_FIELDS):
        row = [*row, ""]
    if len(row) == len(PRE_PERSONAL_FIELDS):
        row = [*row, *[""] * len(PERSONAL_FIELDS)]
    return row


class RunStore:
    def __init__(self, run_dir: Path, run_id: str = "") -> None:
        self.use(run_dir, run_id)

    def use(self, run_dir: Path, run_id: str) -> None:
        """Point at another run's directory (the aggregator picks its run at start)."""
        self.run_dir, self.run_id = run_dir, run_id
        self.model_path = run_dir / "global_model.npz"
        self.log_path = run_dir / "rounds.csv"

    def check_writable(self) -> None:
        """Fail at start, not after the first round's work, when state cannot be saved."""
        self._rows()  # and when the round log cannot be appended to
        probe = self.run_dir / f".write-test.{os.getpid()}"
        try:
            write_atomic(probe, b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write in run directory {self.run_dir}: "
                              f"{exc.strerror}") from exc

    def save_model(self, spec: ModelSpec, params: NDArray[np.float64], *, round_id: int,
                   version: int, record: RoundResult | None = None) -> None:
        meta: dict[str, object] = {"round": round_id, "model_version": version}
        if record is not None:
            meta["record"] = audit_row(self.run_id, record)
        try:
            save_model(self.model_path, spec, params, metadata=meta)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.model_path}: {exc.strerror}") from exc

    def load_params(self, spec: ModelSpec) -> tuple[NDArray[np.float64], int | None]:
        """The saved global model and its version; (zeros, None) if there is none yet."""
        if not self.model_path.exists():
            return np.zeros(spec.n_params), None
        saved_spec, params, meta = self._load()
        if saved_spec != spec:
            raise ConfigError(f"{self.model_path} holds another model than the config; "
                              "set [output] resume = false to start a new run")
        version = meta.get("model_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ConfigError(f"{self.model_path}: model_version {version!r} is not a "
                              "non-negative integer")
        return params, version

    def saved_spec(self) -> ModelSpec | None:
        """The spec of the saved model; None if no model was saved yet."""
        return self._load()[0] if self.model_path.exists() else None

    def _load(self) -> tuple[ModelSpec, NDArray[np.float64], dict[str, object]]:
        try:
            return load_model(self.model_path)
        except ModelError as exc:
            raise ConfigError(f"cannot resume: {exc}") from exc

    def record(self, result: RoundResult) -> None:
        self._append(audit_row(self.run_id, result))

    def recover_record(self) -> bool:
        """Append the saved model's audit row unless ``rounds.csv`` already ends with it."""
        if not self.model_path.exists():
            return False
        row = self._load()[2].get("record")
        if row is None:
            return False  # a model written before audit rows travelled with it
        if isinstance(row, list):
            row = _upgrade(row, self.run_id)
        if not (isinstance(row, list) and len(row) == len(ROUND_LOG_FIELDS)
                and all(isinstance(c, str) for c in row)):
            raise ConfigError(f"{self.model_path}: its audit record is malformed")
        rows = self._rows()
        if rows and rows[-1] == row:
            return False
        self._append(row, rows)
        return True

    def log_rows(self) -> list[dict[str, str]]:
        """The round log as column -> cell (older logs in today's columns); ConfigError if
        it is not one."""
        return [dict(zip(ROUND_LOG_FIELDS, row, strict=False)) for row in self._rows()]

    def _rows(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        try:
            text = self.log_path.read_bytes().decode()
            if "\0" in text:
                raise ValueError("it holds NUL bytes")
            rows = [r for r in csv.reader(io.StringIO(text)) if r]
        except (OSError, ValueError, csv.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc
            raise ConfigError(f"cannot read round log {self.log_path}: {reason}; move it "
                              "away") from exc
        if rows and tuple(rows[0]) in (LEGACY_FIELDS, BASE_FIELDS, PRE_DP_FIELDS,
                                       PRE_PERSONAL_FIELDS):
            # Rewritten in today's columns on the next append.
            return [_upgrade(r, self.run_id) for r in rows[1:]]
        if rows and tuple(rows[0]) != ROUND_LOG_FIELDS:
            raise ConfigError(f"{self.log_path} is not a fedmq round log (header "
                              f"{','.join(rows[0])[:60]!r}); move it away")
        return rows[1:]

    def _append(self, row: list[str], rows: list[list[str]] | None = None) -> None:
        # Rewritten whole and atomically: an append cut by a crash would leave half a row.
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerows([list(ROUND_LOG_FIELDS), *(self._rows() if rows is None else rows),
                          row])
        try:
            write_atomic(self.log_path, buf.getvalue().encode())
        except OSError as exc:
            raise ConfigError(f"cannot write {self.log_path}: {exc.strerror}") from exc
