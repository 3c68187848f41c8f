"""Pick the model class that matches a spec."""

from __future__ import annotations

from typing import Any

from fedmq.models.errors import ModelError
from fedmq.models.linear import LinearRegressionModel
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.models.spec import ModelSpec

_CLASSES: dict[str, type[LinearRegressionModel] | type[LogisticRegressionModel]] = {
    "linear": LinearRegressionModel,
    "logistic": LogisticRegressionModel,
}


def make_model(
    spec: ModelSpec, **hyperparams: Any
) -> LinearRegressionModel | LogisticRegressionModel:
    """Instantiate the model for ``spec.kind``; ``hyperparams`` go to its constructor."""
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    cls = _CLASSES[spec.kind]
    try:
        return cls(spec, **hyperparams)
    except TypeError as exc:
        # Unknown keyword arguments would otherwise surface as a bare TypeError.
        raise ModelError(f"invalid hyperparameters for {cls.__name__}: {exc}") from exc
