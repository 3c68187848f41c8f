"""Skip codes for the errors local training raises, the status detail and the log line."""

from __future__ import annotations

import numpy as np
import pytest
from support import local_data

from fedmq.edge_agent.health import FIXES, RoundSkipped, public_detail, skip_code, skip_line
from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.models.errors import DivergedError, LabelError
from fedmq.protocol.health import SKIP_CODES


def test_every_code_has_a_fix():
    assert set(FIXES) == set(SKIP_CODES)


def _model_error(spec: ModelSpec, y, *, x_scale: float = 1.0, **kw) -> ModelError:
    data = local_data(0, 20)
    model = make_model(spec, **{"learning_rate": 0.1, "epochs": 2, **kw})
    with pytest.raises(ModelError) as info:
        model.fit(data.X * x_scale, y)
    return info.value


LOGISTIC = ModelSpec(kind="logistic", features=("x1", "x2", "x3"), n_classes=2)
LINEAR = ModelSpec(kind="linear", features=("x1", "x2", "x3"))


def test_real_model_errors_get_their_codes():
    assert skip_code(_model_error(LOGISTIC, np.full(20, 0.5))) == "bad-labels"
    assert skip_code(_model_error(LOGISTIC, np.arange(20.0))) == "class-outside-model"
    diverged = _model_error(LINEAR, np.full(20, 1e6), x_scale=1e100, learning_rate=1e3)
    assert skip_code(diverged) == "diverged"


class Coded(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__("whatever the text says: diverged, class labels must lie in")
        self.code = code


def test_only_the_models_own_error_types_name_a_code():
    """The code comes from the type (LabelError.code, DivergedError), never from a text."""
    assert skip_code(LabelError("class-outside-model", "x")) == "class-outside-model"
    assert skip_code(DivergedError("x")) == "diverged"
    assert skip_code(Coded("class-outside-model")) == "data-error"
    assert skip_code(ModelError("SGD diverged, X must have 3 columns")) == "data-error"


def test_round_skipped_refuses_unknown_codes():
    with pytest.raises(ValueError, match="skip code"):
        RoundSkipped("tired", "x")
    assert RoundSkipped("diverged", "long local text").detail == "long local text"


def test_public_detail_hides_the_path_and_the_cell():
    path = "/home/pi/data/log.csv"
    message = f"{path}:52: column 'temp' is not a number (could not convert string to " \
              "float: 'secret')"
    assert public_detail(message, path) == "data file line 52: column 'temp' is not a number"
    assert public_detail(f"data file {path} not found", path) == "the data file not found"
    assert public_detail(f"data file {path}:3 holds a NUL byte: not a text CSV file", path) \
        == "data file line 3 holds a NUL byte: not a text CSV file"

def test_the_log_line_names_round_code_and_fix():
    line = skip_line(4, "feature-mismatch", "missing: f23; extra: foo")
    assert line == ("round 4 skipped (feature-mismatch): missing: f23; extra: foo; "
                    f"fix: {FIXES['feature-mismatch']}")
