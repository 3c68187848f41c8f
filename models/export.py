"""A portable description of a trained model that any language can evaluate. Pure.

The training format (``models.io``) stores fedmq's flat parameter vector; this
one spells the model out, so a C, JavaScript or spreadsheet user needs no fedmq
to use it::

    z = (x - center) / scale                        # per feature, in ``features`` order
    s = coefficients @ z + intercept                # one score per row of coefficients
    linear:            prediction = s[0]
    logistic, binary:  p(class 1) = 1 / (1 + exp(-s[0])); class 1 if s[0] > 0
    logistic, K > 2:   p = softmax(s); class = classes[argmax(s)]

``predict_portable`` is that recipe in numpy and serves as its executable spec.
A linear model trained on a standardized label (``target_center``/``target_scale``)
is exported with that folded into ``coefficients`` and ``intercept``, so the
recipe gives label units unchanged (and reads back as an equivalent plain spec).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fedmq.models.base import FloatArray, as_float_matrix, as_param_vector
from fedmq.models.errors import ModelError
from fedmq.models.spec import ModelSpec

SCHEMA = "fedmq.model-export/1"
_KEYS = ("schema", "kind", "link", "features", "classes", "center", "scale", "coefficients",
         "intercept")


def _link(spec: ModelSpec) -> str:
    if spec.kind == "linear":
        return "identity"
    return "sigmoid" if spec.n_classes == 2 else "softmax"


def to_portable(spec: ModelSpec, params: ArrayLike) -> dict[str, Any]:
    """The JSON-ready export document of ``spec`` with ``params``."""
    vector = as_param_vector(params, spec.n_params)
    d = spec.n_features
    P = vector.reshape(spec.n_outputs, d + 1)
    if spec.kind == "linear":
        # label = target_center + target_scale * score, and the score is affine in z.
        target_center, target_scale = spec.target_affine
        P = P * target_scale
        P[:, d] += target_center
    return {
        "schema": SCHEMA,
        "kind": spec.kind,
        "link": _link(spec),
        "features": list(spec.features),
        "classes": list(range(spec.n_classes)) if spec.kind == "logistic" else None,
        "center": [0.0] * d if spec.center is None else list(spec.center),
        "scale": [1.0] * d if spec.scale is None else list(spec.scale),
        "coefficients": P[:, :d].tolist(),
        "intercept": P[:, d].tolist(),
    }


def from_portable(doc: Mapping[str, Any]) -> tuple[ModelSpec, FloatArray]:
    """Spec and flat parameters back from an export document; ModelError names what is wrong."""
    if not isinstance(doc, Mapping):
        raise ModelError("an exported model must be a JSON object")
    if doc.get("schema") != SCHEMA:
        raise ModelError(f"schema is {doc.get('schema')!r}, this build reads {SCHEMA!r}")
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        raise ModelError(f"exported model lacks key(s) {', '.join(missing)}")
    classes = doc["classes"]
    n_classes = 0
    if doc["kind"] == "logistic":
        if not isinstance(classes, list) or classes != list(range(len(classes))):
            raise ModelError("classes must be the list 0, 1, ..., K-1")
        n_classes = len(classes)
    spec = ModelSpec(kind=doc["kind"], features=doc["features"], n_classes=n_classes,
                     center=doc["center"], scale=doc["scale"])
    if doc["link"] != _link(spec):
        raise ModelError(f"link {doc['link']!r} does not fit kind {spec.kind!r} with "
                         f"{n_classes} classes (expected {_link(spec)!r})")
    try:
        W = np.asarray(doc["coefficients"], dtype=np.float64)
        b = np.asarray(doc["intercept"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"coefficients and intercept must be numbers: {exc}") from exc
    shape = (spec.n_outputs, spec.n_features)
    if W.shape != shape or b.shape != (spec.n_outputs,):
        raise ModelError(f"coefficients must be {shape[0]} x {shape[1]} and intercept "
                         f"{shape[0]} long, got {W.shape} and {b.shape}")
    return spec, as_param_vector(np.column_stack([W, b]).ravel(), spec.n_params)


def predict_portable(doc: Mapping[str, Any], X: ArrayLike) -> FloatArray:
    """Evaluate the export document on rows ``X``: predictions (labels or values)."""
    spec, _ = from_portable(doc)
    Z = (as_float_matrix(X, spec.n_features) - np.asarray(doc["center"])) / np.asarray(
        doc["scale"])
    S = Z @ np.asarray(doc["coefficients"], dtype=np.float64).T + np.asarray(doc["intercept"])
    if doc["link"] == "identity":
        out: FloatArray = S[:, 0]
    elif doc["link"] == "sigmoid":
        out = (S[:, 0] > 0).astype(np.float64)
    else:
        out = np.argmax(S, axis=1).astype(np.float64)
    return out
