"""Immutable, self-validating description of a model's shape and preprocessing."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, SupportsIndex

from fedmq.models.errors import ModelError

KINDS: tuple[str, ...] = ("linear", "logistic")

_FIELDS = ("kind", "features", "n_classes", "center", "scale", "target_center", "target_scale")
_TARGET_FIELDS = ("target_center", "target_scale")
_REQUIRED = ("kind", "features")


def _as_int(value: object, name: str) -> int:
    # bool is an int subclass; True as a class count is almost certainly a bug.
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ModelError(f"{name} must be an integer, got {value!r}")
    return operator.index(value)


def _entry(name: str, i: int, features: tuple[str, ...]) -> str:
    """``scale[2] (feature 'current_a')``: which entry, and which feature it belongs to."""
    label = f" (feature {features[i]!r})" if i < len(features) else ""
    return f"{name}[{i}]{label}"


def _as_float_tuple(value: object, name: str, features: tuple[str, ...]) -> tuple[float, ...]:
    n = len(features)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ModelError(f"{name} must be a sequence of {n} numbers, got {value!r}")
    out: list[float] = []
    for i, item in enumerate(value):
        if isinstance(item, bool):
            raise ModelError(f"{_entry(name, i, features)} must be a number, got {item!r}")
        try:
            number = float(item)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{_entry(name, i, features)} must be a number, "
                             f"got {item!r}") from exc
        if not math.isfinite(number):
            raise ModelError(f"{_entry(name, i, features)} must be finite, got {number!r}")
        out.append(number)
    if len(out) != n:
        raise ModelError(f"{name} must have one entry per feature ({n}), got {len(out)}")
    return tuple(out)


def _as_finite(value: object, name: str) -> float:
    # Strings are refused rather than parsed: "60.0" in a spec is a config mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModelError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ModelError(f"{name} must be finite, got {number!r}")
    return number


@dataclass(frozen=True)
class ModelSpec:
    """What a model looks like: task, input features, classes and standardization.

    ``center``/``scale`` standardize the features; for kind "linear",
    ``target_center``/``target_scale`` standardize the label the same way, so the
    parameters live in standardized label units whatever the label's magnitude
    (None means 0 and 1: no standardization).

    The spec is what edge devices and the aggregator must agree on for parameter
    vectors to be interchangeable, so it is validated eagerly and is hashable.
    Sequence fields are normalised to tuples (e.g. lists coming from JSON).
    """

    kind: str
    features: tuple[str, ...]
    n_classes: int = 0
    center: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    target_center: float | None = None
    target_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ModelError(f"kind must be one of {KINDS}, got {self.kind!r}")

        raw_features: object = self.features
        if isinstance(raw_features, (str, bytes)) or not isinstance(raw_features, Iterable):
            raise ModelError(f"features must be a sequence of names, got {raw_features!r}")
        features = tuple(raw_features)
        if not features:
            raise ModelError("features must not be empty")
        for name in features:
            if not isinstance(name, str) or not name:
                raise ModelError(f"feature names must be non-empty strings, got {name!r}")
        if len(set(features)) != len(features):
            dupes = sorted({f for f in features if features.count(f) > 1})
            raise ModelError(f"feature names must be unique, duplicated: {dupes}")
        # frozen=True forbids normal assignment; normalising here keeps the spec hashable.
        object.__setattr__(self, "features", features)

        n_classes = _as_int(self.n_classes, "n_classes")
        if self.kind == "linear" and n_classes != 0:
            raise ModelError(f"n_classes must be 0 for kind 'linear', got {n_classes}")
        if self.kind == "logistic" and n_classes < 2:
            raise ModelError(f"n_classes must be >= 2 for kind 'logistic', got {n_classes}")
        object.__setattr__(self, "n_classes", n_classes)

        if self.center is not None:
            object.__setattr__(self, "center", _as_float_tuple(self.center, "center", features))
        if self.scale is not None:
            scale = _as_float_tuple(self.scale, "scale", features)
            for i, s in enumerate(scale):
                if s <= 0.0:
                    raise ModelError(f"{_entry('scale', i, features)} must be > 0, got {s!r}")
            object.__setattr__(self, "scale", scale)

        for name in _TARGET_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if self.kind != "linear":
                raise ModelError(f"{name} is only allowed for kind 'linear' (a class label "
                                 f"is not standardized), got {name} = {value!r} for kind "
                                 f"{self.kind!r}")
            object.__setattr__(self, name, _as_finite(value, name))
        if self.target_scale is not None and self.target_scale <= 0.0:
            raise ModelError(f"target_scale must be > 0, got {self.target_scale!r}")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_outputs(self) -> int:
        """Rows of the parameter matrix: K for softmax, otherwise a single score."""
        if self.kind == "logistic" and self.n_classes > 2:
            return self.n_classes
        return 1

    @property
    def n_params(self) -> int:
        return self.n_outputs * (self.n_features + 1)

    @property
    def target_affine(self) -> tuple[float, float]:
        """(center, scale) of the label: label = center + scale * standardized label."""
        center = 0.0 if self.target_center is None else self.target_center
        scale = 1.0 if self.target_scale is None else self.target_scale
        return center, scale

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "features": list(self.features),
            "n_classes": self.n_classes,
            "center": None if self.center is None else list(self.center),
            "scale": None if self.scale is None else list(self.scale),
        }
        # Only when set: a spec without them serializes exactly as before, so its
        # model files and messages stay readable by older builds.
        for name in _TARGET_FIELDS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ModelError(f"spec must be a mapping, got {type(data).__name__}")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ModelError(f"spec is missing required field(s): {missing}")
        # Unknown keys are rejected so a typo ("scales") cannot silently drop preprocessing.
        unknown = sorted(str(key) for key in data if key not in _FIELDS)
        if unknown:
            raise ModelError(f"spec has unknown field(s): {unknown}")
        try:
            return cls(
                kind=data["kind"],
                features=data["features"],
                n_classes=data.get("n_classes", 0),
                center=data.get("center"),
                scale=data.get("scale"),
                target_center=data.get("target_center"),
                target_scale=data.get("target_scale"),
            )
        except ModelError:
            raise
        except (TypeError, ValueError) as exc:
            raise ModelError(f"invalid spec: {exc}") from exc
