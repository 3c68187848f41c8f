from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.models import ModelError, ModelSpec


def test_model_error_is_value_error() -> None:
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize(
    ("kind", "n_classes", "d", "expected"),
    [
        ("linear", 0, 3, 4),
        ("logistic", 2, 3, 4),
        ("logistic", 3, 3, 12),
        ("logistic", 5, 1, 10),
    ],
)
def test_n_params(kind: str, n_classes: int, d: int, expected: int) -> None:
    spec = ModelSpec(kind, tuple(f"f{i}" for i in range(d)), n_classes=n_classes)
    assert spec.n_features == d
    assert spec.n_params == expected


def test_sequences_are_normalised_to_tuples_and_spec_is_hashable() -> None:
    spec = ModelSpec(
        "linear",
        ["a", "b"],  # type: ignore[arg-type]
        center=[1, 2],  # type: ignore[arg-type]
        scale=np.array([0.5, 4.0]),  # type: ignore[arg-type]
    )
    assert spec.features == ("a", "b")
    assert spec.center == (1.0, 2.0)
    assert spec.scale == (0.5, 4.0)
    assert all(type(v) is float for v in spec.center + spec.scale)
    same = ModelSpec("linear", ("a", "b"), center=(1.0, 2.0), scale=(0.5, 4.0))
    assert spec == same
    assert hash(spec) == hash(same)


def test_numpy_integer_n_classes_is_accepted() -> None:
    spec = ModelSpec("logistic", ("a",), n_classes=np.int64(3))  # type: ignore[arg-type]
    assert spec.n_classes == 3
    assert type(spec.n_classes) is int


def test_spec_is_frozen() -> None:
    spec = ModelSpec("linear", ("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "logistic"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "svm", "features": ("a",)}, "kind"),
        ({"kind": "Linear", "features": ("a",)}, "kind"),
        ({"kind": "linear", "features": ()}, "empty"),
        ({"kind": "linear", "features": "ab"}, "sequence"),
        ({"kind": "linear", "features": 3}, "sequence"),
        ({"kind": "linear", "features": ("a", "a")}, "unique"),
        ({"kind": "linear", "features": ("a", 1)}, "strings"),
        ({"kind": "linear", "features": ("a", "")}, "strings"),
        ({"kind": "linear", "features": ("a",), "n_classes": 2}, "n_classes"),
        ({"kind": "logistic", "features": ("a",)}, "n_classes"),
        ({"kind": "logistic", "features": ("a",), "n_classes": 1}, "n_classes"),
        ({"kind": "logistic", "features": ("a",), "n_classes": 2.0}, "integer"),
        ({"kind": "logistic", "features": ("a",), "n_classes": True}, "integer"),
        ({"kind": "linear", "features": ("a", "b"), "center": (0.0,)}, "one entry per feature"),
        ({"kind": "linear", "features": ("a",), "center": (math.nan,)}, "finite"),
        ({"kind": "linear", "features": ("a",), "center": ("x",)}, "number"),
        ({"kind": "linear", "features": ("a",), "center": 1.0}, "sequence"),
        ({"kind": "linear", "features": ("a",), "scale": (0.0,)}, "> 0"),
        ({"kind": "linear", "features": ("a",), "scale": (-1.0,)}, "> 0"),
        ({"kind": "linear", "features": ("a",), "scale": (math.inf,)}, "finite"),
        ({"kind": "linear", "features": ("a", "b"), "scale": (1.0, 1.0, 1.0)}, "per feature"),
        ({"kind": "logistic", "features": ("a",), "n_classes": 2, "target_center": 1.0},
         "target_center is only allowed for kind 'linear'"),
        ({"kind": "logistic", "features": ("a",), "n_classes": 3, "target_scale": 1.0},
         "target_scale is only allowed for kind 'linear'"),
        ({"kind": "linear", "features": ("a",), "target_scale": 0.0}, "target_scale must be > 0"),
        ({"kind": "linear", "features": ("a",), "target_scale": -2.0}, "target_scale must be > 0"),
        ({"kind": "linear", "features": ("a",), "target_scale": math.inf},
         "target_scale must be finite"),
        ({"kind": "linear", "features": ("a",), "target_center": math.nan},
         "target_center must be finite"),
        ({"kind": "linear", "features": ("a",), "target_center": "60"},
         "target_center must be a number"),
        ({"kind": "linear", "features": ("a",), "target_center": True},
         "target_center must be a number"),
        ({"kind": "linear", "features": ("a",), "target_scale": [1.0]},
         "target_scale must be a number"),
    ],
)
def test_invalid_specs_raise_model_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelSpec(**kwargs)


def test_to_dict_is_json_safe_and_round_trips() -> None:
    spec = ModelSpec("logistic", ("a", "b"), n_classes=3, center=(1.0, -2.5), scale=(3.0, 0.25))
    data = spec.to_dict()
    assert data == {
        "kind": "logistic",
        "features": ["a", "b"],
        "n_classes": 3,
        "center": [1.0, -2.5],
        "scale": [3.0, 0.25],
    }
    assert ModelSpec.from_dict(json.loads(json.dumps(data))) == spec


def test_target_standardization_round_trips_and_is_only_written_when_set() -> None:
    spec = ModelSpec("linear", ("a",), target_center=np.float64(60), target_scale=0.5)
    assert spec.target_center == 60.0 and type(spec.target_center) is float
    assert spec.target_affine == (60.0, 0.5)
    data = spec.to_dict()
    assert data["target_center"] == 60.0 and data["target_scale"] == 0.5
    assert ModelSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert hash(spec) == hash(ModelSpec.from_dict(data))
    assert spec != ModelSpec("linear", ("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.target_scale = 2.0  # type: ignore[misc]
    # A spec without them serializes exactly as before this field existed, so model
    # files and messages of such specs stay byte-identical (and readable by old builds).
    plain = ModelSpec("linear", ("a",), target_center=None)
    assert "target_center" not in plain.to_dict() and "target_scale" not in plain.to_dict()
    assert plain.target_affine == (0.0, 1.0)
    only_center = ModelSpec.from_dict({"kind": "linear", "features": ["a"],
                                       "target_center": -3})
    assert only_center.target_affine == (-3.0, 1.0)


def test_from_dict_reads_dicts_without_target_fields() -> None:
    old = {"kind": "linear", "features": ["a"], "n_classes": 0, "center": [1.0], "scale": [2.0]}
    assert ModelSpec.from_dict(old).target_affine == (0.0, 1.0)


def test_from_dict_defaults_optional_fields() -> None:
    spec = ModelSpec.from_dict({"kind": "linear", "features": ["x"]})
    assert spec == ModelSpec("linear", ("x",))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"features": ["a"]}, "missing"),
        ({"kind": "linear"}, "missing"),
        ({"kind": "linear", "features": ["a"], "scales": [1.0]}, "unknown"),
        ({"kind": "linear", "features": ["a"], "target_mean": 1.0}, "unknown"),
        ({"kind": "logistic", "features": ["a"], "n_classes": 2, "target_center": None,
          "target_scale": 2.0}, "target_scale is only allowed"),
        ({"kind": "linear", "features": None}, "features"),
        ({"kind": "logistic", "features": ["a"], "n_classes": "3"}, "integer"),
        ({"kind": "logistic", "features": ["a"], "n_classes": None}, "integer"),
        ({"kind": 7, "features": ["a"]}, "kind"),
        ({"kind": "linear", "features": ["a"], "center": {"a": 1}}, "number"),
        ({"kind": "linear", "features": ["a"], "scale": [None]}, "number"),
        (["kind", "linear"], "mapping"),
        (None, "mapping"),
    ],
)
def test_from_dict_rejects_bad_input_with_model_error(data: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelSpec.from_dict(data)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@st.composite
def specs(draw: st.DrawFn) -> ModelSpec:
    d = draw(st.integers(1, 6))
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=d, max_size=d, unique=True))
    kind = draw(st.sampled_from(["linear", "logistic"]))
    n_classes = 0 if kind == "linear" else draw(st.integers(2, 6))
    center = draw(st.none() | st.tuples(*[finite] * d))
    scale = draw(st.none() | st.tuples(*[positive] * d))
    linear = kind == "linear"
    target_center = draw(st.none() | finite) if linear else None
    target_scale = draw(st.none() | positive) if linear else None
    return ModelSpec(kind, tuple(names), n_classes=n_classes, center=center, scale=scale,
                     target_center=target_center, target_scale=target_scale)


@settings(max_examples=60, database=None, deadline=None)
@given(specs())
def test_dict_round_trip_property(spec: ModelSpec) -> None:
    restored = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec
    assert restored.n_params == spec.n_params
