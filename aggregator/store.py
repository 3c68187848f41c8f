"""What the aggregator keeps on disk: the latest global model and a per-round log."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from models import ModelError, ModelSpec, load_model, save_model
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from aggregator.service import RoundResult

ROUND_LOG_FIELDS = ("round", "model_version", "closed_by", "reported", "expected", "rejected",
                    "total_weight", "seconds", "update_norm", "agents", "excluded")


class RunStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.model_path = state_dir / "global_model.npz"
        self.log_path = state_dir / "rounds.csv"

    def save_model(self, spec: ModelSpec, params: NDArray[np.float64], *, round_id: int,
                   version: int) -> None:
        save_model(self.model_path, spec, params,
                   metadata={"round": round_id, "model_version": version})

    def load_params(self, spec: ModelSpec) -> tuple[NDArray[np.float64], int | None]:
        """The saved global model and its version; (zeros, None) if there is none yet."""
        if not self.model_path.exists():
            return np.zeros(spec.n_params), None
        try:
            saved_spec, params, meta = load_model(self.model_path)
        except ModelError as exc:
            raise ConfigError(f"cannot resume: {exc}") from exc
        if saved_spec != spec:
            raise ConfigError(f"{self.model_path} holds another model than the config; "
                              "move it away to start a new run")
        return params, int(meta.get("model_version", 0))

    def record(self, result: RoundResult) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(ROUND_LOG_FIELDS)
            writer.writerow([result.round_id, result.model_version, result.closed_by,
                             len(result.reported), result.expected, result.rejected,
                             f"{result.total_weight:.0f}", f"{result.seconds:.3f}",
                             f"{result.update_norm:.6g}", " ".join(result.reported),
                             " ".join(result.excluded)])
