"""The simulation's tasks: which column is learned by which model, and the baseline.

The configured spec (with or without the sensors' datasheet center/scale) and the
centralized scikit-learn model trained on the pooled rows, which only a simulation
can build and federated learning has to come close to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.models import ModelSpec
from fedmq.simulation import synthetic

# task -> (label column, model kind, classes)
TASKS: dict[str, tuple[str, str, int]] = {
    "fault": ("fault", "logistic", 2),
    "fault_type": ("fault_type", "logistic", len(synthetic.FAULT_TYPES)),
    "next_temperature": ("next_temperature_c", "linear", 0),
}


def model_spec(task: str, scaling: str = "federated", spare_sensors: int = 0) -> ModelSpec:
    """The configured spec: without center/scale unless the datasheet gives them (a
    regression label's center/scale come from the statistics round either way). The
    features are the four sensors and ``spare_sensors`` spare channels."""
    _label, kind, classes = TASKS[task]
    feats = synthetic.features(spare_sensors)
    if scaling != "datasheet":
        return ModelSpec(kind=kind, features=feats, n_classes=classes)
    return ModelSpec(kind=kind, features=feats, n_classes=classes,
                     center=tuple(synthetic.nominal(f)[0] for f in feats),
                     scale=tuple(synthetic.nominal(f)[1] for f in feats))


def xy(rows: NDArray[np.float64], label: str,
       spare_sensors: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    cols = synthetic.columns(spare_sensors)
    start = cols.index(synthetic.FEATURES[0])  # the features are contiguous columns
    X = rows[:, start:start + len(synthetic.features(spare_sensors))].copy()
    return X, synthetic.column(rows, cols, label)


def central_baseline(task: str, train: NDArray[np.float64], test: NDArray[np.float64],
                     spare_sensors: int = 0) -> float:
    """What a data scientist with all the raw data in one place would get."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    label, kind, _ = TASKS[task]
    (Xtr, ytr), (Xte, yte) = xy(train, label, spare_sensors), xy(test, label, spare_sensors)
    estimator: Any = LinearRegression() if kind == "linear" else LogisticRegression(max_iter=2000)
    pipe = make_pipeline(StandardScaler(), estimator).fit(Xtr, ytr)
    return float(pipe.score(Xte, yte))
