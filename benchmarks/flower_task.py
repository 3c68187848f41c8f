"""What both sides of ``fedmq bench-flower`` share: the fleet, its files, the model spec.

Imports neither flwr nor the gateway's packages: the Flower side runs in its own
virtual environment (flwr and amqtt pin incompatible typer versions), where it
loads this module to build exactly the data, model and training settings fedmq's
simulation uses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.data import LocalData, load_csv
from fedmq.models import ModelSpec, make_model
from fedmq.simulation import synthetic
from fedmq.simulation.tasks import TASKS, model_spec

TASK = "fault"
# Datasheet center/scale on both sides: the spec is fixed before round 1, so fedmq runs no
# statistics round that Flower's FedAvg has no counterpart for.
SCALING = "datasheet"


@dataclass(frozen=True)
class Task:
    """One run's fleet and training settings; serialised to JSON for the Flower side."""

    clients: int = 20
    rounds: int = 5
    samples_per_device: int = 400
    iid: bool = False
    seed: int = 0
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    l2: float = 0.0

    @property
    def spec(self) -> ModelSpec:
        return model_spec(TASK, SCALING)

    @property
    def label(self) -> str:
        return TASKS[TASK][0]

    def fleet(self) -> list[synthetic.DeviceData]:
        """The same generator and FleetSpec fedmq.simulation.run.Simulation uses."""
        return synthetic.generate_fleet(synthetic.FleetSpec(
            n_devices=self.clients, samples_per_device=self.samples_per_device,
            iid=self.iid, seed=self.seed))

    def initial_params(self) -> NDArray[np.float64]:
        return np.zeros(self.spec.n_params)  # where a new fedmq run starts (aggregator.runs)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Task:
        return cls(**json.loads(text))


def write_fleet(task: Task, data_dir: Path) -> list[Path]:
    """Each device's TRAIN rows as a CSV, as the simulation writes them for its agents."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for dev in task.fleet():
        path = data_dir / f"{dev.device_id}.csv"
        synthetic.write_csv(path, dev.columns, dev.train)
        paths.append(path)
    return paths


def load_client(task: Task, path: Path) -> LocalData:
    """A device's rows loaded the way a fedmq agent loads them (holdout 0: all for training)."""
    return load_csv(path, synthetic.FEATURES, task.label)


def local_fit(task: Task, data: LocalData, start: NDArray[np.float64]) -> NDArray[np.float64]:
    """The same local SGD as edge_agent.trainer.train_round (same model, settings, seed)."""
    model = make_model(task.spec, learning_rate=task.learning_rate, epochs=task.epochs,
                       batch_size=task.batch_size, l2=task.l2, seed=task.seed)
    model.fit(data.X, data.y, init_params=start)
    return np.asarray(model.params_, dtype=np.float64)


def test_score(task: Task, params: NDArray[np.float64]) -> float:
    """Accuracy on the pooled held-out rows, as fedmq.simulation.run scores its final model."""
    from fedmq.simulation.tasks import xy

    X, y = xy(synthetic.pooled(task.fleet(), "test"), task.label)
    return float(make_model(task.spec).set_params_vector(params).score(X, y))
