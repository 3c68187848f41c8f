"""Where a device keeps its personal model: ``<state_dir>/personal_model.npz``, never sent.

The file is a plain fedmq model file (models.io): any tool that predicts with a global
model predicts with it. Its metadata names the mode, the fleet spec it was derived from
and the run, round and model version of the global model it started from. Without a
state_dir the model lives in memory for the process's lifetime.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedmq.edge_agent.personal import PersonalModel
from fedmq.models import ModelError, load_model
from fedmq.runtime.files import save_model

log = logging.getLogger(__name__)

PERSONAL_FILE = "personal_model.npz"


def load_personal(path: str | Path) -> PersonalModel:
    """The personal model saved at ``path``; ModelError when it is not one."""
    spec, params, meta = load_model(path)
    return PersonalModel.from_file(spec, params, meta)


class PersonalStore:
    """The device's current personal model, loaded once and saved atomically on change."""

    def __init__(self, state_dir: str | None) -> None:
        self.path = None if state_dir is None else Path(state_dir) / PERSONAL_FILE
        self.current: PersonalModel | None = None
        if self.path is not None and self.path.exists():
            try:
                self.current = load_personal(self.path)
            except (ModelError, OSError) as exc:
                # A broken file costs the warm start only: the next round fits a new one.
                log.warning("ignoring personal model %s: %s", self.path, exc)

    def keep(self, model: PersonalModel) -> None:
        self.current = model
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_model(self.path, model.spec, model.params, metadata=model.metadata())
        except (OSError, ModelError) as exc:
            log.error("cannot save the personal model to %s: %s", self.path, exc)
