"""Pure-numpy linear models for fedmq edge devices and the aggregator.

All models share one flat float64 parameter vector layout (see ``ModelSpec``), so
the aggregator can average deltas without knowing which model produced them.
Nothing here performs I/O except ``load_model`` (``dump_model`` returns bytes).
"""

from fedmq.models.errors import DivergedError, LabelError, ModelError
from fedmq.models.factory import make_model
from fedmq.models.io import dump_model, load_model
from fedmq.models.linear import LinearRegressionModel
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.models.metrics import accuracy, log_loss, mae, mse, r2_score
from fedmq.models.spec import ModelSpec

__all__ = [
    "DivergedError",
    "LabelError",
    "LinearRegressionModel",
    "LogisticRegressionModel",
    "ModelError",
    "ModelSpec",
    "accuracy",
    "dump_model",
    "load_model",
    "log_loss",
    "mae",
    "make_model",
    "mse",
    "r2_score",
]
