"""The run's server optimizer: its state stepped each training round and kept beside the model.

``server_opt.json`` in the run directory holds the optimizer's state after the model
versions it produced (the last two, floats as float.hex: exact), written atomically BEFORE
the model file. A restart takes the state of the saved model's version, so a crash at any
moment resumes bit for bit: between the two writes the model is one version behind, the
round is reopened, and the state it starts from is still in the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.server_opt import (
    ServerState,
    initial_state,
    replace_moments,
    server_step,
    state_matches,
)
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.server import ServerSettings
from fedmq.runtime.files import write_atomic

log = logging.getLogger("fedmq.aggregator.service")
FILE = "server_opt.json"
SCHEMA = "fedmq.server-opt/1"
FloatArray = NDArray[np.float64]


class ServerOptimizer:
    """Steps the global model with [server]'s optimizer and persists its state."""

    def __init__(self, settings: ServerSettings, n_params: int) -> None:
        self.settings, self.n_params = settings, n_params
        self.state = initial_state(settings, n_params)
        self.path: Path | None = None
        self._states: dict[int, dict[str, Any]] = {}  # model version -> state, as saved

    def resume(self, run_dir: Path, version: int) -> None:
        """Use ``run_dir``'s file; continue from the state that produced model ``version``.

        A corrupt file, or one without that version's state, stops the start (one line):
        resuming with fresh moments would silently change the run's maths. A run that
        stepped with another optimizer than [server] now names starts that one afresh.
        """
        self.path = run_dir / FILE
        self._states = {}
        self.state = initial_state(self.settings, self.n_params)
        if version == 0:
            return
        if not self.path.exists():
            if self.settings.optimizer != "fedavg":
                log.warning("%s: no server optimizer state (the run stepped with fedavg so "
                            "far): %s starts from fresh moments at model version %d",
                            run_dir, self.settings.optimizer, version)
            return
        try:
            optimizer, states = self._read()
            if version not in states:
                raise ValueError(f"it holds the state after model version(s) "
                                 f"{', '.join(map(str, sorted(states)))}, not {version}")
            state = ServerState.from_dict(states[version])
            if optimizer == self.settings.optimizer and (
                    why := state_matches(self.settings, state, self.n_params)):
                raise ValueError(why)
        except (OSError, ValueError, ProtocolError) as exc:
            raise ConfigError(f"cannot resume from {self.path}: {exc}; restore it, or set "
                              "[output] resume = false to start a new run beside it") from None
        if optimizer != self.settings.optimizer:
            log.warning("run stepped with server optimizer %s until model version %d; [server] "
                        "now says %s: it starts from fresh moments", optimizer, version,
                        self.settings.optimizer)
            self.state = replace_moments(initial_state(self.settings, self.n_params), state.t)
            return
        self.state, self._states = state, {version: states[version]}

    def step(self, params: FloatArray, avg_delta: FloatArray, version: int) -> FloatArray:
        """Model ``version`` -> ``version + 1``; the new state is durable when this returns."""
        new_params, state = server_step(self.settings, self.state, params, avg_delta)
        if self.path is not None:
            states = {v: s for v, s in self._states.items() if v == version}
            states[version + 1] = state.to_dict()
            doc = {"schema": SCHEMA, "optimizer": self.settings.optimizer,
                   "settings": self.settings.to_dict(),
                   "states": {str(v): s for v, s in sorted(states.items())}}
            try:
                write_atomic(self.path, json.dumps(doc, indent=1).encode())
            except OSError as exc:
                raise ConfigError(f"cannot write {self.path}: {exc.strerror}") from exc
            self._states = states
        self.state = state
        return new_params

    def _read(self) -> tuple[str, dict[int, Any]]:
        assert self.path is not None
        doc = json.loads(self.path.read_bytes().decode())
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} file")
        optimizer, states = doc.get("optimizer"), doc.get("states")
        if not isinstance(optimizer, str) or not isinstance(states, dict):
            raise ValueError("it lacks the optimizer's name or its states")
        try:
            return optimizer, {int(v): s for v, s in states.items()}
        except ValueError:
            raise ValueError("its states are not keyed by model version") from None
